// Element tables of the LAMMPS side: pair_coeff maps atom types by element symbol, and the pair
// style checks the types' masses against the mapped elements. (Python uses ASE's tables.)
#pragma once

#include <cstdint>
#include <string>

namespace llpr {

// Element symbol <-> atomic number (1..118); -1 / "" when unknown.
int atomic_number(const std::string &symbol);
std::string element_symbol(int64_t z);
// Standard atomic weight of element z (g/mol); 0 when unknown.
double atomic_mass(int64_t z);

}  // namespace llpr
