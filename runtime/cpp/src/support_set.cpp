#include "support_set.hpp"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <unistd.h>

#include "error.hpp"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "support-set files are little-endian; this reader/writer assumes a little-endian host"
#endif

namespace fssam2::detail {
namespace {

using nlohmann::json;

constexpr const char *FORMAT = "fssam2-support-set";
constexpr int FORMAT_VERSION = 1;
constexpr uint64_t MAX_HEADER = 100u << 20;  // safetensors' own limit

[[noreturn]] void bad(const std::string &message) { throw Error(FSSAM2_ERR_SUPPORT_SET, message); }

// A new file `<path>.tmp.<random>` (name in `tmp`) opened for writing with mode 0666 less the process umask, as
// Python's runtime.engine.files writes (mkstemp would make it 0600: a set is a shareable data file). -1: errno set.
int create_temp(const std::string &path, std::string &tmp) {
    static std::atomic<unsigned> counter{0};
    std::random_device rd;
    for (int attempt = 0; attempt < 100; ++attempt) {
        char suffix[32];
        std::snprintf(suffix, sizeof suffix, ".tmp.%08x%04x", rd(), counter++ & 0xffffu);
        tmp = path + suffix;
        const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    return -1;
}

std::string shape_str(const std::vector<int64_t> &shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// The metadata fields that must match, as (key, set's value, artifacts' value).
std::vector<std::pair<std::string, std::string>> fields(const Fingerprint &f) {
    return {{"tokens_per_support", std::to_string(f.tokens_per_support)},
            {"model", f.model},
            {"weights", f.weights},
            {"image_size", std::to_string(f.image_size)},
            {"memory_dtype", f.memory_dtype}};
}

uint64_t numel(const std::vector<int64_t> &shape) {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    return n;
}

struct TensorEntry {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;
};

}  // namespace

Fingerprint Fingerprint::of(const Manifest &m) {
    Fingerprint f;
    f.model = m.model_name;
    f.weights = m.weights;
    f.memory_dtype = m.memory_attention.input("memory").dtype;
    f.image_size = m.image_size;
    f.tokens_per_support = m.tokens_per_support;
    const std::vector<int64_t> &shape = m.memory_encoder.output("memory").shape;
    f.channels = shape.size() == 3 ? shape[2] : 0;
    return f;
}

bool Fingerprint::operator==(const Fingerprint &o) const {
    return fields(*this) == fields(o) && channels == o.channels;
}

SupportSet combine(const SupportSet &a, const SupportSet &b) {
    if (!(a.fingerprint == b.fingerprint)) bad("cannot combine support sets made by different models");
    SupportSet out = a;
    out.shots += b.shots;
    out.memory.insert(out.memory.end(), b.memory.begin(), b.memory.end());
    out.memory_pos.insert(out.memory_pos.end(), b.memory_pos.begin(), b.memory_pos.end());
    out.image_sizes.insert(out.image_sizes.end(), b.image_sizes.begin(), b.image_sizes.end());
    out.mask_areas.insert(out.mask_areas.end(), b.mask_areas.begin(), b.mask_areas.end());
    return out;
}

void save_support_set(const SupportSet &set, const std::string &path, const char *writer_version) {
    if (set.fingerprint.memory_dtype != "float32") bad("libfssam2 writes float32 support sets only");
    if (set.fingerprint.weights.empty()) bad("the artifacts' manifest does not identify the weights; the set cannot be bound to them");
    const int64_t k = set.shots, kt = set.tokens(), c = set.fingerprint.channels;
    json header;
    json meta = {{"format", FORMAT}, {"format_version", std::to_string(FORMAT_VERSION)}, {"shots", std::to_string(k)},
                 {"fssam2_version", writer_version}};
    for (const auto &[key, value] : fields(set.fingerprint)) meta[key] = value;
    header["__metadata__"] = meta;
    struct Blob {
        const char *name, *dtype;
        std::vector<int64_t> shape;
        const void *data;
        size_t bytes;
    };
    const Blob blobs[] = {
        {"memory", "F32", {1, kt, c}, set.memory.data(), set.memory.size() * sizeof(float)},
        {"memory_pos", "F32", {1, kt, c}, set.memory_pos.data(), set.memory_pos.size() * sizeof(float)},
        {"mask_areas", "I64", {k}, set.mask_areas.data(), set.mask_areas.size() * sizeof(int64_t)},
        {"image_sizes", "I32", {k, 2}, set.image_sizes.data(), set.image_sizes.size() * sizeof(int32_t)}};
    uint64_t offset = 0;
    for (const Blob &b : blobs) {
        header[b.name] = {{"dtype", b.dtype}, {"shape", b.shape}, {"data_offsets", {offset, offset + b.bytes}}};
        offset += b.bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as safetensors writes it
    const uint64_t n = text.size();

    std::string tmp;
    const int fd = create_temp(path, tmp);
    if (fd < 0) throw Error(FSSAM2_ERR_IO, "cannot write " + path + ": " + std::strerror(errno));
    bool ok = true;
    const auto put = [&](const void *p, size_t bytes) {
        for (const char *q = static_cast<const char *>(p); ok && bytes;) {
            const ssize_t w = ::write(fd, q, bytes);
            if (w < 0 && errno == EINTR) continue;
            ok = w > 0;
            if (ok) q += w, bytes -= static_cast<size_t>(w);
        }
    };
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    put(len, 8);
    put(text.data(), text.size());
    for (const Blob &b : blobs) put(b.data, b.bytes);
    ok = ok && ::fsync(fd) == 0;
    const int saved = errno;
    ok = ::close(fd) == 0 && ok;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        const std::string why = std::strerror(ok ? errno : saved);
        std::remove(tmp.c_str());
        throw Error(FSSAM2_ERR_IO, "cannot write " + path + ": " + why);
    }
}

SupportSet load_support_set(const std::string &path, const Fingerprint &expected) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(FSSAM2_ERR_IO, "cannot read support set " + path + ": " + std::strerror(errno));
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string where = "support set " + path;
    if (bytes.size() < 8) bad(where + " is not a safetensors file (" + std::to_string(bytes.size()) + " bytes)");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
    if (n > MAX_HEADER || n > bytes.size() - 8) bad(where + " is not a safetensors file (header length " + std::to_string(n) + ")");
    json header;
    try {
        header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
    } catch (const json::exception &e) {
        bad(where + " has a malformed safetensors header: " + e.what());
    }
    const uint64_t data_size = bytes.size() - 8 - n;
    const char *data = bytes.data() + 8 + n;
    std::map<std::string, std::string> meta;
    std::map<std::string, TensorEntry> tensors;
    try {
        if (!header.is_object()) bad(where + " has a malformed safetensors header (not an object)");
        for (const auto &[key, value] : header.items()) {
            if (key == "__metadata__") {
                for (const auto &[k, v] : value.items()) meta[k] = v.get<std::string>();
                continue;
            }
            TensorEntry t{value.at("dtype").get<std::string>(), value.at("shape").get<std::vector<int64_t>>(), 0, 0};
            const auto offsets = value.at("data_offsets").get<std::vector<uint64_t>>();
            if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
                bad(where + ": tensor '" + key + "' lies outside the file (truncated?)");
            t.begin = offsets[0], t.end = offsets[1];
            tensors[key] = t;
        }
    } catch (const json::exception &e) {
        bad(where + " has a malformed safetensors header: " + e.what());
    }
    if (meta["format"] != FORMAT) bad(where + " is not a support-set file (metadata format '" + meta["format"] + "')");
    if (meta["format_version"] != std::to_string(FORMAT_VERSION))
        bad(where + " has format_version '" + meta["format_version"] + "'; this libfssam2 reads version " +
            std::to_string(FORMAT_VERSION));

    // Every field that differs from the artifacts, then every tensor whose shape or dtype is wrong: one message.
    std::vector<std::string> problems;
    for (const auto &[key, want] : fields(expected)) {
        auto it = meta.find(key);
        const std::string got = it == meta.end() ? "(missing)" : it->second;
        if (got != want) problems.push_back(key + ": set " + got + " != artifacts " + (want.empty() ? "(unidentified)" : want));
    }
    int64_t k = -1;
    try {
        size_t used = 0;
        k = std::stoll(meta["shots"], &used);
        if (used != meta["shots"].size() || k < 1) k = -1;
    } catch (const std::exception &) {
    }
    if (k < 1) problems.push_back("shots: '" + meta["shots"] + "' is not a positive count");
    if (problems.empty()) {
        const int64_t kt = k * expected.tokens_per_support, c = expected.channels;
        const std::pair<const char *, std::pair<std::string, std::vector<int64_t>>> want[] = {
            {"memory", {"F32", {1, kt, c}}},
            {"memory_pos", {"F32", {1, kt, c}}},
            {"image_sizes", {"I32", {k, 2}}},
            {"mask_areas", {"I64", {k}}}};
        for (const auto &[name, spec] : want) {
            auto it = tensors.find(name);
            if (it == tensors.end()) {
                problems.push_back(std::string(name) + ": missing");
                continue;
            }
            const TensorEntry &t = it->second;
            if (t.dtype != spec.first || t.shape != spec.second)
                problems.push_back(std::string(name) + ": set " + t.dtype + shape_str(t.shape) + " != expected " + spec.first +
                                   shape_str(spec.second) + " (shots " + std::to_string(k) + ", tokens_per_support " +
                                   std::to_string(expected.tokens_per_support) + ", " + std::to_string(c) + " channels)");
            else if (t.end - t.begin != numel(t.shape) * (t.dtype == "I64" ? 8 : 4))
                problems.push_back(std::string(name) + ": " + std::to_string(t.end - t.begin) + " bytes do not fit its shape");
        }
    }
    if (!problems.empty()) {
        std::string message = where + " does not fit these artifacts: ";
        for (size_t i = 0; i < problems.size(); ++i) message += (i ? "; " : "") + problems[i];
        bad(message);
    }
    SupportSet set;
    set.fingerprint = expected;
    set.shots = k;
    const auto copy = [&](const char *name, auto &vec) {
        const TensorEntry &t = tensors.at(name);
        vec.resize((t.end - t.begin) / sizeof(vec[0]));
        std::memcpy(vec.data(), data + t.begin, t.end - t.begin);
    };
    copy("memory", set.memory);
    copy("memory_pos", set.memory_pos);
    copy("image_sizes", set.image_sizes);
    copy("mask_areas", set.mask_areas);
    return set;
}

}  // namespace fssam2::detail
