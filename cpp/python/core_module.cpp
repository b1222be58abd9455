// llpr._core: Python binding of the C++ core (numpy in, numpy out; no torch headers here).

#include "llpr/core.h"
#include "llpr/integrity.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

namespace py = pybind11;

namespace {

using DArray = py::array_t<double, py::array::c_style | py::array::forcecast>;
using IArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

py::dict metadata_dict(const llpr::Metadata &m)
{
  py::dict d;
  d["path"] = m.path;
  d["format_version"] = m.format_version;
  d["species"] = m.species;
  // symbols from ASE's table (the element tables of the C++ side belong to the LAMMPS plugin)
  py::object symbols = py::module_::import("ase.data").attr("chemical_symbols");
  py::list elements;
  for (auto z : m.species) elements.append(symbols[py::int_(z)]);
  d["elements"] = elements;
  d["cutoff"] = m.cutoff;
  d["receptive_field"] = m.receptive_field;
  d["strictly_local"] = m.strictly_local;
  d["energy_unit"] = m.energy_unit;
  d["length_unit"] = m.length_unit;
  d["dtype"] = m.dtype;
  d["feature_reduction"] = m.feature_reduction;
  d["n_features"] = m.n_features;
  d["alpha"] = m.alpha;
  d["varsigma"] = m.varsigma;
  d["calibration"] = m.calibration;
  d["package_version"] = m.package_version;
  d["model_info"] = m.model_info;
  d["ensemble_size"] = m.ensemble_size;
  d["has_extrapolation_grade"] = m.has_extrapolation_grade;
  if (m.has_extrapolation_grade) d["max_train_q"] = m.max_train_q;
  else d["max_train_q"] = py::none();
  d["uncertainty_evaluation"] = m.uncertainty_evaluation;
  d["integrity"] = m.integrity;
  d["sealed"] = m.sealed;
  return d;
}

py::array_t<double> to_array(const std::vector<double> &v, std::vector<py::ssize_t> shape)
{
  py::array_t<double> a(shape);
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), sizeof(double) * v.size());
  return a;
}

int64_t feature_rows(const DArray &features, int64_t n_features)
{
  if (features.ndim() == 1 && features.shape(0) == n_features) return 1;
  if (features.ndim() != 2 || features.shape(1) != n_features)
    throw py::value_error("features must have shape (n, " + std::to_string(n_features) + ")");
  return features.shape(0);
}

class PyModel {
 public:
  PyModel(const std::string &path, const std::string &device) : model_(path, device) {}

  py::dict metadata() const { return metadata_dict(model_.metadata()); }
  std::string device() const { return model_.device(); }

  py::dict compute(DArray positions, IArray atomic_numbers, IArray edge_index, py::object edge_shifts,
                   py::object n_centers, bool forces, bool virial)
  {
    DArray shifts;
    llpr::Inputs in = inputs(positions, atomic_numbers, edge_index, edge_shifts, n_centers, shifts);
    const int64_t N = in.n_atoms, C = in.n_centers;
    const llpr::Request req{forces, virial};
    llpr::Outputs out;
    {
      py::gil_scoped_release release;
      model_.compute(in, req, out);
    }
    const int64_t F = model_.metadata().n_features;
    py::dict d;
    d["energy"] = out.energy;
    d["energies"] = to_array(out.energies, {C});
    if (forces) d["forces"] = to_array(out.forces, {N, 3});
    if (virial) {
      d["virial"] = to_array(out.virial, {3, 3});
      d["virial_atom"] = to_array(out.virial_atom, {N, 3, 3});
    }
    py::array_t<double> feats({C, F});
    py::array_t<double> sigma({C}), lpr({C});
    model_.cached_features(feats.mutable_data());
    model_.cached_local_uncertainty(sigma.mutable_data(), lpr.mutable_data());
    std::vector<double> sum(F, 0.0);
    model_.cached_feature_sum_all(sum.data());
    d["features"] = feats;
    d["sigma"] = sigma;
    d["lpr"] = lpr;
    if (model_.metadata().has_extrapolation_grade) {
      py::array_t<double> gamma({C});
      model_.cached_extrapolation_grade(gamma.mutable_data());
      d["gamma"] = gamma;
    }
    d["energy_sigma"] = std::sqrt(model_.energy_variance(sum.data()));
    return d;
  }

  py::dict compute_ensemble(DArray positions, IArray atomic_numbers, IArray edge_index, py::object edge_shifts,
                            py::object n_centers, bool forces, bool virial)
  {
    DArray shifts;
    llpr::Inputs in = inputs(positions, atomic_numbers, edge_index, edge_shifts, n_centers, shifts);
    const int64_t N = in.n_atoms;
    const llpr::Request req{forces, virial};
    llpr::EnsembleOutputs out;
    {
      py::gil_scoped_release release;
      model_.compute_ensemble(in, req, out);
    }
    const int64_t K = out.size;
    py::dict d;
    d["energy_deviations"] = to_array(out.energy_deviations, {K});
    if (forces) {
      d["force_deviations"] = to_array(out.force_deviations, {K, N, 3});
      d["force_sigma"] = to_array(out.force_sigma, {N});
    }
    if (virial) d["virial_deviations"] = to_array(out.virial_deviations, {K, 3, 3});
    return d;
  }

 private:
  llpr::Inputs inputs(DArray &positions, IArray &atomic_numbers, IArray &edge_index, py::object &edge_shifts,
                      py::object &n_centers, DArray &shifts)
  {
    if (positions.ndim() != 2 || positions.shape(1) != 3)
      throw py::value_error("positions must have shape (N, 3)");
    const int64_t N = positions.shape(0);
    if (atomic_numbers.ndim() != 1 || atomic_numbers.shape(0) != N)
      throw py::value_error("atomic_numbers must have shape (N,)");
    if (edge_index.ndim() != 2 || edge_index.shape(0) != 2)
      throw py::value_error("edge_index must have shape (2, E)");
    const int64_t E = edge_index.shape(1);
    const int64_t C = n_centers.is_none() ? N : n_centers.cast<int64_t>();
    if (C < 0 || C > N) throw py::value_error("n_centers must lie in 0..N");
    const int64_t *e = edge_index.data();
    for (int64_t k = 0; k < E; ++k) {
      if (e[k] < 0 || e[k] >= C || e[E + k] < 0 || e[E + k] >= N)
        throw py::value_error("edge_index out of range (row 0 must be < n_centers, row 1 < N)");
    }
    llpr::Inputs in;
    if (!edge_shifts.is_none()) {
      shifts = edge_shifts.cast<DArray>();
      if (shifts.ndim() != 2 || shifts.shape(0) != E || shifts.shape(1) != 3)
        throw py::value_error("edge_shifts must have shape (E, 3)");
      in.edge_shifts = shifts.data();
    }
    in.n_atoms = N;
    in.n_centers = C;
    in.n_edges = E;
    in.positions = positions.data();
    in.atomic_numbers = atomic_numbers.data();
    in.edge_index = e;
    return in;
  }

 public:

  py::array_t<double> quadratic_form(DArray features) const
  {
    const int64_t n = feature_rows(features, model_.metadata().n_features);
    py::array_t<double> out({n});
    model_.quadratic_form(features.data(), n, out.mutable_data());
    return out;
  }

  py::tuple local_uncertainty(DArray features) const
  {
    const int64_t n = feature_rows(features, model_.metadata().n_features);
    py::array_t<double> sigma({n}), lpr({n});
    model_.local_uncertainty(features.data(), n, sigma.mutable_data(), lpr.mutable_data());
    return py::make_tuple(sigma, lpr);
  }

  py::array_t<double> extrapolation_grade(DArray features) const
  {
    const int64_t n = feature_rows(features, model_.metadata().n_features);
    py::array_t<double> out({n});
    model_.extrapolation_grade(features.data(), n, out.mutable_data());
    return out;
  }

  double energy_variance(DArray feature_sum) const
  {
    const int64_t F = model_.metadata().n_features;
    if (feature_sum.size() != F)
      throw py::value_error("feature_sum must have " + std::to_string(F) + " values");
    return model_.energy_variance(feature_sum.data());
  }

  py::array_t<double> ensemble_energy_deviations(DArray feature_sum) const
  {
    const int64_t F = model_.metadata().n_features;
    if (feature_sum.size() != F)
      throw py::value_error("feature_sum must have " + std::to_string(F) + " values");
    std::vector<double> out(static_cast<size_t>(model_.metadata().ensemble_size));
    model_.ensemble_energy_deviations(feature_sum.data(), out.data());
    return to_array(out, {static_cast<py::ssize_t>(out.size())});
  }

 private:
  llpr::Model model_;
};

}  // namespace

PYBIND11_MODULE(_core, m)
{
  m.doc() = "C++ core of llpr: load, validate and run an exported LLPR model (as LAMMPS does)";

  static py::exception<llpr::Error> model_error(m, "ModelError", PyExc_ValueError);
  static py::exception<llpr::DamagedFile> damaged_error(m, "DamagedFileError", model_error.ptr());
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const llpr::FileNotFound &e) {
      PyErr_SetString(PyExc_FileNotFoundError, e.what());
    } catch (const llpr::DamagedFile &e) {
      py::set_error(damaged_error, e.what());
    } catch (const llpr::Error &e) {
      py::set_error(model_error, e.what());
    }
  });

  m.attr("FORMAT_VERSION") = llpr::kFormatVersion;
  m.attr("TORCH_VERSION") = llpr::torch_version_compiled();

  m.def(
      "check", [](const std::string &path) { return metadata_dict(llpr::check_file(path)); },
      py::arg("path"),
      "Load and validate an exported model on the CPU exactly as the LAMMPS plugin does; return "
      "its metadata. Raises FileNotFoundError or ValueError (ModelError) naming each problem.");
  m.def(
      "verify_file",
      [](const std::string &path) {
        const llpr::IntegrityReport r = llpr::verify_file(path);
        py::dict d;
        d["sealed"] = r.sealed;
        d["bytes"] = r.bytes;
        d["records"] = r.records;
        d["summary"] = r.summary;
        return d;
      },
      py::arg("path"),
      "Verify an exported file's integrity (its whole-file seal, or the CRC-32 of its stored zip "
      "records when it has none); DamagedFileError (a ValueError) naming what is wrong.");
  m.def("seal_file", &llpr::seal_file, py::arg("path"),
        "Write llpr's whole-file checksum into the zip end record of `path` (done by export).");
  m.def(
      "crc64", [](py::bytes data) { std::string s = data; return llpr::crc64(s.data(), s.size()); },
      py::arg("data"), "CRC-64/XZ of `data` (the seal's checksum)");
  m.def(
      "crc32", [](py::bytes data) { std::string s = data; return llpr::crc32(s.data(), s.size()); },
      py::arg("data"), "zip CRC-32 of `data`");
  m.def("check_device", &llpr::check_device, py::arg("device"),
        "ValueError (ModelError) naming the problem unless `device` is usable: cpu, cuda, cuda:N");
  m.def("no_extrapolation_grade_message", &llpr::no_extrapolation_grade_message, py::arg("path"),
        "The message for a file without the extrapolation grade's reference (head.max_train_q)");
  m.def("no_ensemble_message", &llpr::no_ensemble_message, py::arg("path"),
        py::arg("need") = "force uncertainties",
        "The message for a file without the last-layer ensemble that `need` needs");
  m.def("torch_version_runtime", &llpr::torch_version_runtime);
  m.def("cuda_available", &llpr::cuda_available);
  m.def("cuda_device_count", &llpr::cuda_device_count);
  m.def("cuda_unavailable_reason", &llpr::cuda_unavailable_reason,
        "Why no CUDA GPU is usable: a CPU-only torch, its CUDA library not loaded, or no GPU visible");
  m.def(
      "native_quadratic_form",
      [](DArray inverse_factor_t, DArray features) {
        if (inverse_factor_t.ndim() != 2 || inverse_factor_t.shape(0) != inverse_factor_t.shape(1))
          throw py::value_error("inverse_factor_t must be a square (F, F) array");
        const int64_t F = inverse_factor_t.shape(0);
        const int64_t n = feature_rows(features, F);
        py::array_t<double> out({n});
        llpr::native_quadratic_form(inverse_factor_t.data(), F, features.data(), n, out.mutable_data());
        return out;
      },
      py::arg("inverse_factor_t"), py::arg("features"),
      "q_i = |f_i U|^2 by the native CPU kernel the core uses for the per-atom quadratic form "
      "(U = LLPRHead.inverse_factor_t, upper triangular); ValueError if this CPU has none");
  m.def("native_kernels_unsupported_reason", &llpr::native_kernels_unsupported_reason,
        "'' if this CPU runs llpr's native kernels (x86-64 with AVX2 and FMA), else why not");
  m.def("set_num_threads", &llpr::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &llpr::get_num_threads);

  py::class_<PyModel>(m, "Model")
      .def(py::init<const std::string &, const std::string &>(), py::arg("path"),
           py::arg("device") = "cpu")
      .def_property_readonly("metadata", &PyModel::metadata)
      .def_property_readonly("device", &PyModel::device)
      .def("compute", &PyModel::compute, py::arg("positions"), py::arg("atomic_numbers"),
           py::arg("edge_index"), py::arg("edge_shifts") = py::none(),
           py::arg("n_centers") = py::none(), py::arg("forces") = true, py::arg("virial") = true,
           "Run the model: energy, energies, forces, virial, virial_atom, features, sigma, lpr and "
           "energy_sigma (sigma of the total energy), all float64 numpy arrays")
      .def("compute_ensemble", &PyModel::compute_ensemble, py::arg("positions"), py::arg("atomic_numbers"),
           py::arg("edge_index"), py::arg("edge_shifts") = py::none(),
           py::arg("n_centers") = py::none(), py::arg("forces") = true, py::arg("virial") = false,
           "Run the last-layer ensemble (ensemble_forward): energy_deviations (K,), force_deviations "
           "(K, N, 3), force_sigma (N,) and virial_deviations (K, 3, 3), float64 numpy arrays; "
           "ValueError if the file has no ensemble")
      .def("quadratic_form", &PyModel::quadratic_form, py::arg("features"))
      .def("local_uncertainty", &PyModel::local_uncertainty, py::arg("features"))
      .def("extrapolation_grade", &PyModel::extrapolation_grade, py::arg("features"),
           "gamma_i = q_i / max_train_q (LLPRHead.extrapolation_grade); ValueError if the file has no max_train_q")
      .def("energy_variance", &PyModel::energy_variance, py::arg("feature_sum"))
      .def("ensemble_energy_deviations", &PyModel::ensemble_energy_deviations, py::arg("feature_sum"),
           "The K members' energy deviations dw_k . s (eV) of one summed feature vector s, as "
           "compute llpr ensemble yes gives them (empty when the file has no ensemble)");
}
