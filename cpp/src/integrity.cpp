// Integrity of exported model files: see llpr/integrity.h.

#include "llpr/integrity.h"

#include "llpr/core.h"

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

namespace llpr {

namespace {

// slicing-by-8 tables: 8 bytes per step, independent of any library
template <typename T, T Poly>
struct CrcTables {
  std::array<std::array<T, 256>, 8> t{};
  CrcTables()
  {
    for (unsigned i = 0; i < 256; ++i) {
      T c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ Poly : c >> 1;
      t[0][i] = c;
    }
    for (unsigned i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
};

template <typename T, T Poly>
T crc_update(const void *data, size_t n, T crc)
{
  static const CrcTables<T, Poly> tables;
  const auto &t = tables.t;
  const unsigned char *p = static_cast<const unsigned char *>(data);
  crc = ~crc;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);  // little-endian hosts (x86-64, aarch64)
    if constexpr (sizeof(T) == 8) {
      word ^= static_cast<uint64_t>(crc);
      crc = static_cast<T>(t[7][word & 0xff] ^ t[6][(word >> 8) & 0xff] ^ t[5][(word >> 16) & 0xff] ^
                           t[4][(word >> 24) & 0xff] ^ t[3][(word >> 32) & 0xff] ^ t[2][(word >> 40) & 0xff] ^
                           t[1][(word >> 48) & 0xff] ^ t[0][word >> 56]);
    } else {
      const uint32_t lo = static_cast<uint32_t>(word) ^ static_cast<uint32_t>(crc);
      const uint32_t hi = static_cast<uint32_t>(word >> 32);
      crc = static_cast<T>(t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
                           t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24]);
    }
    p += 8;
    n -= 8;
  }
  while (n--) crc = static_cast<T>((crc >> 8) ^ t[0][(crc ^ *p++) & 0xff]);
  return ~crc;
}

const char kSealPrefix[] = "llpr-integrity crc64-xz=";
constexpr size_t kEndRecord = 22;         // zip end of central directory record, without comment
constexpr size_t kMaxComment = 65535;

uint16_t u16(const unsigned char *p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t u32(const unsigned char *p) { return static_cast<uint32_t>(u16(p)) | (static_cast<uint32_t>(u16(p + 2)) << 16); }
uint64_t u64(const unsigned char *p) { return static_cast<uint64_t>(u32(p)) | (static_cast<uint64_t>(u32(p + 4)) << 32); }

[[noreturn]] void damaged(const std::string &path, const std::string &why)
{
  throw DamagedFile("model file '" + path + "' is damaged (" + why +
                    "): it is not the file that was exported. Copy it again from where it was "
                    "written, or export it again with `llpr export`");
}

struct File {
  std::string path;
  std::ifstream in;
  int64_t size = 0;
  explicit File(const std::string &p) : path(p), in(p, std::ios::binary)
  {
    if (!in) throw Error("cannot open model file '" + p + "' for reading");
    in.seekg(0, std::ios::end);
    size = static_cast<int64_t>(in.tellg());
  }
  // read n bytes at offset into out; false when the file is shorter
  bool read(int64_t offset, size_t n, unsigned char *out)
  {
    if (offset < 0 || offset + static_cast<int64_t>(n) > size) return false;
    in.clear();
    in.seekg(offset);
    in.read(reinterpret_cast<char *>(out), static_cast<std::streamsize>(n));
    return static_cast<size_t>(in.gcount()) == n;
  }
  template <typename Crc>
  bool checksum(int64_t offset, int64_t n, Crc &&update)
  {
    std::vector<unsigned char> buffer(1 << 20);
    while (n > 0) {
      const size_t chunk = static_cast<size_t>(std::min<int64_t>(n, static_cast<int64_t>(buffer.size())));
      if (!read(offset, chunk, buffer.data())) return false;
      update(buffer.data(), chunk);
      offset += static_cast<int64_t>(chunk);
      n -= static_cast<int64_t>(chunk);
    }
    return true;
  }
};

struct EndRecord {
  int64_t offset = -1;   // of the end record
  std::string comment;
  std::vector<unsigned char> bytes;  // the 22 fixed bytes
};

// The zip end record: the last signature whose comment length reaches exactly the end of file.
EndRecord find_end_record(File &f)
{
  EndRecord end;
  const int64_t tail_size = std::min<int64_t>(f.size, static_cast<int64_t>(kEndRecord + kMaxComment));
  std::vector<unsigned char> tail(static_cast<size_t>(tail_size));
  if (tail_size < static_cast<int64_t>(kEndRecord) || !f.read(f.size - tail_size, tail.size(), tail.data()))
    damaged(f.path, "too short for a zip archive: truncated?");
  for (int64_t k = tail_size - static_cast<int64_t>(kEndRecord); k >= 0; --k) {
    const unsigned char *p = tail.data() + k;
    if (u32(p) != 0x06054b50u) continue;
    const int64_t comment = u16(p + 20);
    if (k + static_cast<int64_t>(kEndRecord) + comment != tail_size) continue;
    end.offset = f.size - tail_size + k;
    end.comment.assign(reinterpret_cast<const char *>(p + kEndRecord), static_cast<size_t>(comment));
    end.bytes.assign(p, p + kEndRecord);
    return end;
  }
  damaged(f.path, "no zip end record: the file is truncated or overwritten at its end");
}

bool parse_seal(const std::string &comment, uint64_t &crc, int64_t &bytes)
{
  const size_t prefix = sizeof(kSealPrefix) - 1;
  if (comment.compare(0, prefix, kSealPrefix) != 0) return false;
  const std::string rest = comment.substr(prefix);
  // exactly "<16 hex> bytes=<decimal>"
  if (rest.size() < 16 + 7 || rest.compare(16, 7, " bytes=") != 0) return false;
  crc = 0;
  for (int k = 0; k < 16; ++k) {
    const char c = rest[k];
    int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (v < 0) return false;
    crc = (crc << 4) | static_cast<uint64_t>(v);
  }
  const std::string digits = rest.substr(23);
  if (digits.empty() || digits.size() > 18) return false;
  bytes = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
    bytes = bytes * 10 + (c - '0');
  }
  return true;
}

std::string seal_text(uint64_t crc, int64_t bytes)
{
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(crc));
  return std::string(kSealPrefix) + hex + " bytes=" + std::to_string(bytes);
}

// The CRC-32 of every stored record of an unsealed archive, against its central directory.
int64_t verify_records(File &f, const EndRecord &end)
{
  const unsigned char *e = end.bytes.data();
  int64_t n_records = u16(e + 10);
  int64_t cd_size = u32(e + 12), cd_offset = u32(e + 16);
  if (n_records == 0xffff || cd_size == 0xffffffffLL || cd_offset == 0xffffffffLL) {
    // zip64: the locator sits right before the end record
    unsigned char loc[20], rec[56];
    if (!f.read(end.offset - 20, 20, loc) || u32(loc) != 0x07064b50u || !f.read(static_cast<int64_t>(u64(loc + 8)), 56, rec) ||
        u32(rec) != 0x06064b50u)
      damaged(f.path, "zip64 end record not found");
    n_records = static_cast<int64_t>(u64(rec + 32));
    cd_size = static_cast<int64_t>(u64(rec + 40));
    cd_offset = static_cast<int64_t>(u64(rec + 48));
  }
  if (cd_offset < 0 || cd_size < 0 || cd_offset + cd_size > end.offset)
    damaged(f.path, "the zip central directory lies outside the file");
  std::vector<unsigned char> cd(static_cast<size_t>(cd_size));
  if (!f.read(cd_offset, cd.size(), cd.data())) damaged(f.path, "cannot read the zip central directory");
  size_t pos = 0;
  for (int64_t r = 0; r < n_records; ++r) {
    if (pos + 46 > cd.size() || u32(&cd[pos]) != 0x02014b50u)
      damaged(f.path, "zip central directory entry " + std::to_string(r) + " is corrupt");
    const unsigned char *h = &cd[pos];
    const int method = u16(h + 10);
    const uint32_t crc = u32(h + 16);
    int64_t csize = u32(h + 20), usize = u32(h + 24), local = u32(h + 42);
    const size_t nl = u16(h + 28), xl = u16(h + 30), cl = u16(h + 32);
    if (pos + 46 + nl + xl + cl > cd.size()) damaged(f.path, "zip central directory is truncated");
    const std::string name(reinterpret_cast<const char *>(h + 46), nl);
    // zip64 extra field: the 64-bit values of the fields that hold 0xffffffff, in this order
    for (size_t x = 46 + nl; x + 4 <= 46 + nl + xl;) {
      const unsigned id = u16(h + x), len = u16(h + x + 2);
      if (id == 0x0001) {
        size_t q = x + 4;
        if (usize == 0xffffffffLL && q + 8 <= x + 4 + len) { usize = static_cast<int64_t>(u64(h + q)); q += 8; }
        if (csize == 0xffffffffLL && q + 8 <= x + 4 + len) { csize = static_cast<int64_t>(u64(h + q)); q += 8; }
        if (local == 0xffffffffLL && q + 8 <= x + 4 + len) { local = static_cast<int64_t>(u64(h + q)); q += 8; }
      }
      x += 4 + len;
    }
    pos += 46 + nl + xl + cl;
    unsigned char lh[30];
    if (!f.read(local, 30, lh) || u32(lh) != 0x04034b50u)
      damaged(f.path, "the local header of record '" + name + "' is corrupt");
    std::vector<unsigned char> lname(u16(lh + 26));
    if (lname.size() != nl || !f.read(local + 30, nl, lname.data()) ||
        std::memcmp(lname.data(), name.data(), nl) != 0 || u16(lh + 8) != method)
      damaged(f.path, "record '" + name + "' does not match its central directory entry");
    const int64_t data = local + 30 + nl + u16(lh + 28);
    if (data + csize > cd_offset) damaged(f.path, "record '" + name + "' runs past the end of the data");
    if (method != 0) continue;  // compressed (small code records): read and checked by libtorch
    if (csize != usize) damaged(f.path, "stored record '" + name + "' has inconsistent sizes");
    uint32_t got = 0;
    if (!f.checksum(data, csize, [&](const unsigned char *p, size_t n) { got = crc32(p, n, got); }))
      damaged(f.path, "record '" + name + "' is truncated");
    if (got != crc) damaged(f.path, "record '" + name + "' fails its CRC-32 check");
  }
  return n_records;
}

}  // namespace

uint64_t crc64(const void *data, size_t n, uint64_t crc)
{
  return crc_update<uint64_t, 0xC96C5795D7870F42ULL>(data, n, crc);
}

uint32_t crc32(const void *data, size_t n, uint32_t crc)
{
  return crc_update<uint32_t, 0xEDB88320u>(data, n, crc);
}

IntegrityReport verify_file(const std::string &path)
{
  File f(path);
  IntegrityReport report;
  report.bytes = f.size;
  const EndRecord end = find_end_record(f);
  if (end.comment.empty()) {
    report.records = verify_records(f, end);
    report.summary = "no whole-file checksum (written without `llpr export`'s seal); CRC-32 of " +
                     std::to_string(report.records) + " zip records checked";
    return report;
  }
  uint64_t want = 0;
  int64_t covered = 0;
  if (!parse_seal(end.comment, want, covered))
    damaged(path, "its zip comment is not an llpr integrity seal");
  if (covered != f.size - static_cast<int64_t>(end.comment.size()))
    damaged(path, "it holds " + std::to_string(f.size) + " bytes, its seal covers " + std::to_string(covered) +
                      " plus the seal itself");
  uint64_t got = 0;
  if (!f.checksum(0, covered, [&](const unsigned char *p, size_t n) { got = crc64(p, n, got); }))
    damaged(path, "cannot read it to the end");
  if (got != want) damaged(path, "its content does not match the checksum written at export");
  report.sealed = true;
  report.seal = end.comment;
  report.summary = "whole-file CRC-64 verified (" + std::to_string(f.size) + " bytes)";
  return report;
}

void seal_file(const std::string &path)
{
  int64_t covered = 0;
  {
    File f(path);
    const EndRecord end = find_end_record(f);
    covered = end.offset + static_cast<int64_t>(kEndRecord);
  }
  // drop any old comment, then write the comment length and checksum the bytes up to the seal
  std::vector<unsigned char> bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.resize(static_cast<size_t>(covered));
    in.read(reinterpret_cast<char *>(bytes.data()), covered);
    if (in.gcount() != covered) throw Error("cannot read '" + path + "' to seal it");
  }
  const std::string probe = seal_text(0, covered);  // the text has a fixed length for a given size
  bytes[covered - 2] = static_cast<unsigned char>(probe.size() & 0xff);
  bytes[covered - 1] = static_cast<unsigned char>(probe.size() >> 8);
  const std::string seal = seal_text(crc64(bytes.data(), bytes.size()), covered);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char *>(bytes.data()), covered);
  out.write(seal.data(), static_cast<std::streamsize>(seal.size()));
  if (!out) throw Error("cannot write the integrity seal into '" + path + "'");
}

}  // namespace llpr
