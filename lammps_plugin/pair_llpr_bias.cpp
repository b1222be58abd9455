// pair_style llpr: the parts of a biased evaluation that need the model (see pair_llpr.h and
// fix_llpr_bias.h). Kept apart from pair_llpr.cpp, which only calls the fix between the
// forward pass and these.

#include "pair_llpr.h"

#include "atom.h"
#include "error.h"
#include "update.h"

#include <string>

using namespace LAMMPS_NS;

int PairLLPR::group_centres(int groupbit) const
{
  const int *mask = atom->mask;
  int count = 0;
  for (int c = 0; c < inputs_.n_centers(); c++)
    if (mask[inputs_.lammps_index(c)] & groupbit) count++;
  return count;
}

void PairLLPR::bias_sigma(const char *who, const std::vector<double> &sum, double sigma_cap, double &sigma,
                          double &value, std::vector<double> &gradient)
{
  gradient.assign(n_features(), 0.0);
  std::string message;
  try {
    model_->bias_sigma(sum.data(), sigma_cap, sigma, value, gradient.data());
  } catch (const std::exception &e) {
    message = fmt::format("{}: {} on timestep {}", who, e.what(), update->ntimestep);
  }
  // the same all-reduced sum on every rank: the same outcome everywhere
  if (!message.empty()) error->all(FLERR, message);
}

void PairLLPR::biased_backward(int groupbit, const std::vector<double> &cotangent, const std::vector<double> *unscaled,
                               std::vector<double> &total, std::vector<double> &partial)
{
  const int *mask = atom->mask;
  bias_weights_.resize(inputs_.n_centers());
  for (int c = 0; c < inputs_.n_centers(); c++) bias_weights_[c] = (mask[inputs_.lammps_index(c)] & groupbit) ? 1.0 : 0.0;
  std::string message;
  try {
    model_->backward(bias_weights_.data(), cotangent.data(), true, unscaled != nullptr, out_);
    if (unscaled) model_->backward(bias_weights_.data(), unscaled->data(), false, false, bias_out_);
  } catch (const llpr::NonFiniteOutput &e) {
    message = non_finite_message(e);
  } catch (const std::exception &e) {
    message = std::string("pair_style llpr (fix llpr/bias): ") + e.what();
  }
  check_all_ranks(message.empty(), message);
  if (!unscaled) return;
  const size_t nall = static_cast<size_t>(atom->nlocal + atom->nghost);
  total.assign(3 * nall, 0.0);
  partial.assign(3 * nall, 0.0);
  inputs_.set_vectors(out_.forces.data(), energy_conversion_, total.data());
  inputs_.set_vectors(bias_out_.forces.data(), energy_conversion_, partial.data());
}
