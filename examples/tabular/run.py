"""LLPR on tabular data: a small network, calibrated uncertainties in the target's own units,
a checkpoint and an exported TorchScript file.

The data are synthetic and made here (nothing is downloaded): three inputs, a smooth target
around 50 with a spread of about 10 "units", and noise that grows with the first input.
Training sees inputs with x0 in [-2, 1] only; the test set adds x0 in [1, 3], outside that
range, where the uncertainty should grow.

    python examples/tabular/run.py [-o tabular_output] [--epochs 200]
"""

import argparse
import math
import os

import numpy as np
import torch

from llpr.uncertainty.calibrate import gaussian_nll
from llpr.modelfile import export_model
from llpr.models.tabular import MLPRegressor, load_tabular
from llpr.uncertainty.estimator import LLPR, load_llpr, save_llpr


def make_data(n: int, rng: np.random.Generator, x0_range=(-2.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n, 3) and targets (n,) in the target's own units."""
    x = rng.uniform(-2.0, 2.0, size=(n, 3))
    x[:, 0] = rng.uniform(*x0_range, size=n)
    clean = 50.0 + 8.0 * np.sin(1.5 * x[:, 0]) + 4.0 * x[:, 1] * x[:, 2] - 3.0 * x[:, 2] ** 2
    noise = (0.5 + 0.3 * (x[:, 0] + 2.0)) * rng.normal(size=n)
    return x, clean + noise


def batches(x: np.ndarray, y: np.ndarray, size: int = 128):
    """(x, y) pairs as float64 arrays, the way many data pipelines hand them over."""
    return [(x[k : k + size], y[k : k + size]) for k in range(0, len(x), size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", default="tabular_output")
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 200)))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)

    x_train, y_train = make_data(1500, rng)
    x_val, y_val = make_data(300, rng)
    x_test, y_test = make_data(300, rng)
    x_far, y_far = make_data(300, rng, x0_range=(1.0, 3.0))

    # the network learns the standardised target t = (y - shift) / scale
    shift, scale = float(y_train.mean()), float(y_train.std())
    model = MLPRegressor(3, hidden=(50,))  # float32
    x_t = torch.tensor(x_train, dtype=torch.float32)
    t_t = torch.tensor((y_train - shift) / scale, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(args.epochs):
        for k in torch.randperm(len(x_t)).split(100):
            optimizer.zero_grad()
            loss = ((model(x_t[k]) - t_t[k]) ** 2).mean()
            loss.backward()
            optimizer.step()

    # batches carry y in its own units; LLPR undoes the standardisation
    llpr = LLPR(model, target_scale=scale, target_shift=shift)
    llpr.fit(batches(x_train, y_train)).calibrate(batches(x_val, y_val))
    s = llpr.calibration_summary()
    print(f"alpha = {s['alpha']:.3g} (target units), varsigma = {s['varsigma']:.3g}, "
          f"validation NLL {s['nll']:.3f}, features not reduced ({s['feature_reduction']})")

    for name, x, y in (("test (inside)", x_test, y_test), ("outside x0 range", x_far, y_far)):
        out = llpr.predict(x)
        err = out["prediction"].numpy() - y
        sig = out["sigma"].numpy()
        rmse = math.sqrt(float(np.mean(err**2)))
        within1 = float(np.mean(np.abs(err) < sig))
        within2 = float(np.mean(np.abs(err) < 2 * sig))
        nll = gaussian_nll(err, sig**2)
        print(f"{name:17s} RMSE {rmse:6.3f}  median sigma {np.median(sig):6.3f}  within 1 sigma {within1:.2f}  "
              f"within 2 sigma {within2:.2f}  NLL {nll:.3f}")

    ckpt = os.path.join(args.output, "llpr.ckpt")
    save_llpr(llpr, ckpt)
    again = load_llpr(ckpt)
    assert torch.equal(again.predict(x_test)["sigma"], llpr.predict(x_test)["sigma"])

    path = export_model(llpr, os.path.join(args.output, "tabular.pt"))
    module = load_tabular(path)
    prediction, sigma = module(torch.tensor(x_test[:3]))
    for p, si, y in zip(prediction.tolist(), sigma.tolist(), y_test[:3]):
        print(f"exported file: prediction {p:7.3f} +- {si:.3f}   (reference {y:7.3f})")
    print(f"wrote {ckpt} and {path}")


if __name__ == "__main__":
    main()
