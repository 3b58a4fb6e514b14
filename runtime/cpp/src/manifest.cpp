#include "manifest.hpp"

#include <fstream>
#include <nlohmann/json.hpp>

#include "error.hpp"
#include "sha256.hpp"

namespace fssam2::detail {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string &message) { throw Error(FSSAM2_ERR_MANIFEST, message); }

TensorSpec tensor_spec(const json &t) {
    TensorSpec spec{t.at("name").get<std::string>(), {}, t.at("dtype").get<std::string>(), {}};
    for (const json &d : t.at("shape")) {
        spec.shape.push_back(d.is_string() ? -1 : d.get<int64_t>());
        spec.dim_names.push_back(d.is_string() ? d.get<std::string>() : std::string());
    }
    return spec;
}

GraphSpec graph_spec(const json &g) {
    GraphSpec spec;
    spec.file = g.at("file").get<std::string>();
    spec.sha256 = g.at("sha256").get<std::string>();
    for (const json &t : g.at("inputs")) spec.inputs.push_back(tensor_spec(t));
    for (const json &t : g.at("outputs")) spec.outputs.push_back(tensor_spec(t));
    for (const json &f : g.value("flavours", json::array()))
        spec.flavours.push_back({f.at("kind").get<std::string>(), f.at("file").get<std::string>(),
                                 f.at("sha256").get<std::string>(), f.at("providers").get<std::vector<std::string>>(),
                                 f.at("source_sha256").get<std::string>()});
    return spec;
}

std::string require_file(const std::string &dir, const std::string &graph, const std::string &file) {
    std::string path = dir + "/" + file;
    std::ifstream probe(path, std::ios::binary);
    if (!probe) fail("graph '" + graph + "' is missing: " + path);
    return path;
}

}  // namespace

void verify_artifact(const std::string &dir, const std::string &graph, const Artifact &artifact) {
    const std::string path = require_file(dir, graph, artifact.file);
    std::string got;
    try {
        got = file_sha256(path);
    } catch (const std::runtime_error &e) {
        fail("graph '" + graph + "': " + e.what());
    }
    if (got != artifact.sha256)
        fail("graph '" + graph + "' (" + path + ") does not match its sha256 in the manifest: corrupt or replaced");
}

Artifact GraphSpec::artifact_for(const std::string &provider) const {
    for (const Flavour &f : flavours) {
        if (f.kind != "onnx") continue;  // engines are for other backends, not ONNX Runtime
        for (const std::string &p : f.providers)
            if (p == provider || p == "*") return {f.file, f.sha256};
    }
    return {file, sha256};
}

const TensorSpec &GraphSpec::input(const std::string &name) const {
    for (const TensorSpec &t : inputs)
        if (t.name == name) return t;
    fail("graph " + file + " has no input '" + name + "' in the manifest");
}

const TensorSpec &GraphSpec::output(const std::string &name) const {
    for (const TensorSpec &t : outputs)
        if (t.name == name) return t;
    fail("graph " + file + " has no output '" + name + "' in the manifest");
}

Manifest load_manifest(const std::string &dir) {
    const std::string path = dir + "/manifest.json";
    std::ifstream in(path);
    if (!in) fail("no manifest.json in " + dir + " (is this an fssam2-export output directory?)");
    json d;
    try {
        d = json::parse(in);
    } catch (const json::parse_error &e) {
        fail(path + " is not valid JSON: " + e.what());
    }
    if (!d.is_object()) fail(path + " is not a JSON object");
    const json version = d.value("schema_version", json());
    if (!version.is_number_integer() || version.get<int>() < 1 || version.get<int>() > 3)
        fail("manifest schema version " + version.dump() +
             " is not supported by libfssam2 (reads 1, 2, 3); re-export the artifacts with a matching fssam2");
    Manifest m;
    m.schema_version = version.get<int>();
    try {
        const json &pre = d.at("preprocess"), &ep = d.at("episode"), &graphs = d.at("graphs"), &model = d.at("model");
        m.model_name = model.at("name").get<std::string>();
        // The weights' identity as support-set files record it (docs/support-sets.md).
        if (model.value("random_init", false))
            m.weights = "random-init:seed=" + model.at("seed").dump();
        else if (model.contains("checkpoint_sha256") && model.at("checkpoint_sha256").is_string())
            m.weights = "sha256:" + model.at("checkpoint_sha256").get<std::string>();
        // else: left empty; support sets refuse artifacts whose weights they cannot identify
        m.image_size = pre.at("image_size").get<int64_t>();
        auto mean = pre.at("mean").get<std::vector<double>>(), stdev = pre.at("std").get<std::vector<double>>();
        if (mean.size() != 3 || stdev.size() != 3) fail("manifest preprocess mean/std must have 3 values (RGB)");
        for (int c = 0; c < 3; ++c) m.mean[c] = static_cast<float>(mean[c]), m.std[c] = static_cast<float>(stdev[c]);
        const auto image_resample = pre.at("image_resample").get<std::string>();
        const auto mask_resample = pre.at("mask_resample").get<std::string>();
        if (image_resample != "bicubic" || mask_resample != "nearest")
            fail("resampling " + image_resample + "/" + mask_resample +
                 " is not implemented by libfssam2 (bicubic/nearest)");
        m.mask_logit_scale = static_cast<float>(ep.at("mask_logit_scale").get<double>());
        m.mask_logit_bias = static_cast<float>(ep.at("mask_logit_bias").get<double>());
        m.tokens_per_support = ep.at("tokens_per_support").get<int64_t>();
        m.low_res_size = ep.at("low_res_size").get<int64_t>();
        std::string missing;
        for (const char *name : {"image_encoder", "memory_encoder", "memory_attention", "mask_decoder"})
            if (!graphs.contains(name)) missing += (missing.empty() ? "" : ", ") + std::string(name);
        if (!missing.empty()) fail("manifest lacks graphs: " + missing);
        m.image_encoder = graph_spec(graphs.at("image_encoder"));
        m.memory_encoder = graph_spec(graphs.at("memory_encoder"));
        m.memory_attention = graph_spec(graphs.at("memory_attention"));
        m.mask_decoder = graph_spec(graphs.at("mask_decoder"));
    } catch (const json::exception &e) {
        fail(std::string("manifest is malformed: ") + e.what());
    }
    if (m.image_size < 32 || m.tokens_per_support < 1 || m.low_res_size < 1)
        fail("manifest has an invalid image_size / tokens_per_support / low_res_size");
    const std::pair<const char *, const GraphSpec *> graphs[] = {{"image_encoder", &m.image_encoder},
                                                                 {"memory_encoder", &m.memory_encoder},
                                                                 {"memory_attention", &m.memory_attention},
                                                                 {"mask_decoder", &m.mask_decoder}};
    for (const auto &[name, g] : graphs) {
        for (const Flavour &f : g->flavours)
            if (f.source_sha256 != g->sha256)
                fail(std::string("graph '") + name + "': flavour " + f.file + " was made from another version of " +
                     g->file + " (stale); re-export");
        require_file(dir, name, g->file);
        for (const Flavour &f : g->flavours) require_file(dir, name, f.file);
    }
    return m;
}

}  // namespace fssam2::detail
