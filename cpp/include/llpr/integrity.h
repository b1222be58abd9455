// Integrity of exported model files (no torch, no LAMMPS).
//
// An exported file is a zip archive (torch.jit.save). libtorch does not check the archive's
// CRCs when it loads a file, so a file damaged in a copy loads and runs with wrong numbers.
// `llpr export` therefore seals the file: the zip end record's comment holds a CRC-64 of every
// byte before it (`llpr-integrity crc64-xz=<16 hex digits> bytes=<N>`), so a change anywhere
// in the file, headers included, is caught. Files without a seal (written by torch.jit.save
// alone) get the zip format's own checks: the CRC-32 of every stored (uncompressed) record,
// i.e. of every tensor.
#pragma once

#include <cstdint>
#include <cstddef>
#include <string>

namespace llpr {

struct IntegrityReport {
  bool sealed = false;       // the file carries llpr's whole-file checksum (and it matched)
  int64_t bytes = 0;         // file size
  int64_t records = 0;       // zip records whose CRC-32 was checked (unsealed files)
  std::string summary;       // one line for `llpr check`
  std::string seal;          // the seal text (zip comment) of a sealed file, "" otherwise
};

// Verify `path`; throws llpr::DamagedFile (see core.h) naming what is wrong.
IntegrityReport verify_file(const std::string &path);

// Write (or rewrite) the seal of the zip archive at `path` in place.
void seal_file(const std::string &path);

// CRC-64/XZ (ECMA-182, reflected; check value of "123456789": 0x995dc9bbdf1939fa) and the zip
// CRC-32 (check value 0xcbf43926), continued from `crc` (0 to start).
uint64_t crc64(const void *data, size_t n, uint64_t crc = 0);
uint32_t crc32(const void *data, size_t n, uint32_t crc = 0);

}  // namespace llpr
