// graphopt_tvm_run: load a graphopt TVM artifact with TVM's runtime and run one inference.
//
//   graphopt_tvm_run ARTIFACT_DIR [INPUT_DIR [OUTPUT_DIR]] [--repeat N]
//
// ARTIFACT_DIR holds model.so and manifest.json (written by TvmModule.save). Input i is read
// from INPUT_DIR/input_<i>.bin (raw little-endian, C order, dtype and shape from the manifest);
// without INPUT_DIR every input is filled with ones. Output i is written to
// OUTPUT_DIR/output_<i>.bin when OUTPUT_DIR is given. A summary of each output is printed.
//
// Build (graphopt.backends.tvm.runner_build.build_runner() runs this; TVM = the tvm package
// directory, TVM_FFI = the tvm_ffi package directory):
//   g++ -std=c++17 -O2 graphopt_tvm_run.cc -I$TVM_FFI/include -L$TVM/lib -L$TVM_FFI/lib \
//       -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -Wl,-rpath,$TVM/lib:$TVM_FFI/lib
// libtvm_runtime is linked for its side effect: it registers the .so loader and the Relax VM.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace ffi = tvm::ffi;
using ffi::Tensor;
// Only tvm-ffi headers are used: the apache-tvm wheel ships an incomplete set of TVM runtime
// headers (tvm/runtime/tensor.h includes tvm/support/io.h, which is not in the wheel).

namespace {

struct CPUAlloc {  // 64-byte aligned, as TVM's kernels assume
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<Spec> ReadSpecs(const ffi::json::Object& manifest, const char* key) {
  std::vector<Spec> specs;
  for (const ffi::Any& item : manifest.at(ffi::String(key)).cast<ffi::json::Array>()) {
    auto obj = item.cast<ffi::json::Object>();
    Spec spec;
    spec.name = std::string(obj.at(ffi::String("name")).cast<ffi::String>());
    spec.dtype = std::string(obj.at(ffi::String("dtype")).cast<ffi::String>());
    for (const ffi::Any& d : obj.at(ffi::String("shape")).cast<ffi::json::Array>()) {
      spec.shape.push_back(d.cast<int64_t>());
    }
    specs.push_back(spec);
  }
  return specs;
}

size_t NumBytes(const Spec& spec) {
  DLDataType dt = ffi::StringToDLDataType(spec.dtype);
  size_t n = (dt.bits * dt.lanes + 7) / 8;
  for (int64_t d : spec.shape) n *= static_cast<size_t>(d);
  return n;
}

Tensor MakeInput(const Spec& spec, const std::string& input_dir, size_t index, DLDevice dev) {
  Tensor t = Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(spec.shape), ffi::StringToDLDataType(spec.dtype), dev);
  size_t nbytes = NumBytes(spec);
  std::string bytes;
  if (!input_dir.empty()) {
    bytes = ReadFile(input_dir + "/input_" + std::to_string(index) + ".bin");
    if (bytes.size() != nbytes) {
      throw std::runtime_error("input '" + spec.name + "': expected " + std::to_string(nbytes) + " bytes, got " +
                               std::to_string(bytes.size()));
    }
  } else {  // ones of the input's type
    bytes.assign(nbytes, '\0');
    DLDataType dt = ffi::StringToDLDataType(spec.dtype);
    size_t width = dt.bits / 8, count = nbytes / width;
    for (size_t i = 0; i < count; ++i) {
      if (dt.code == kDLFloat && dt.bits == 32) { float one = 1.0f; std::memcpy(&bytes[i * 4], &one, 4); }
      else if (dt.code == kDLFloat && dt.bits == 64) { double one = 1.0; std::memcpy(&bytes[i * 8], &one, 8); }
      else { bytes[i * width] = 1; }  // integers and bool, little-endian
    }
  }
  std::memcpy(t.data_ptr(), bytes.data(), nbytes);
  return t;
}

void Flatten(const ffi::Any& value, std::vector<Tensor>* out) {
  if (auto t = value.as<Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) Flatten(item, out);
  } else {
    throw std::runtime_error("unexpected output type " + value.GetTypeKey());
  }
}

// TVM's runtime sizes its thread pool as hardware_concurrency / 2 on x86 (it assumes SMT), so
// on a 2-vCPU machine it runs every kernel on one thread. Use every core unless the user chose;
// the pool reads the variable when it is first used.
void DefaultThreads() {
  if (std::getenv("TVM_NUM_THREADS") || std::getenv("OMP_NUM_THREADS")) return;
  unsigned cores = std::thread::hardware_concurrency();
  if (cores > 0) setenv("TVM_NUM_THREADS", std::to_string(cores).c_str(), 0);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  int repeat = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--repeat" && i + 1 < argc) repeat = std::stoi(argv[++i]);
    else positional.push_back(arg);
  }
  if (positional.empty() || positional.size() > 3) {
    std::cerr << "usage: " << argv[0] << " ARTIFACT_DIR [INPUT_DIR [OUTPUT_DIR]] [--repeat N]\n";
    return 2;
  }
  DefaultThreads();
  const std::string dir = positional[0];
  const std::string input_dir = positional.size() > 1 ? positional[1] : "";
  const std::string output_dir = positional.size() > 2 ? positional[2] : "";
  try {
    ffi::String error;
    ffi::json::Value parsed = ffi::json::Parse(ReadFile(dir + "/manifest.json"), &error);
    if (!error.empty()) throw std::runtime_error("manifest.json: " + std::string(error));
    auto manifest = parsed.cast<ffi::json::Object>();
    if (std::string(manifest.at(ffi::String("format")).cast<ffi::String>()) != "graphopt-tvm-artifact") {
      throw std::runtime_error(dir + " is not a graphopt TVM artifact");
    }
    std::vector<Spec> inputs = ReadSpecs(manifest, "inputs");
    std::vector<Spec> outputs = ReadSpecs(manifest, "outputs");
    std::string library = std::string(manifest.at(ffi::String("library")).cast<ffi::String>());
    std::string entry = std::string(manifest.at(ffi::String("entry")).cast<ffi::String>());

    DLDevice dev{kDLCPU, 0};
    ffi::Module lib = ffi::Module::LoadFromFile(dir + "/" + library);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    constexpr int kPooledAllocator = 2;
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    ffi::Function run = vm->GetFunction(entry).value();

    std::vector<ffi::AnyView> args;
    std::vector<Tensor> tensors;
    for (size_t i = 0; i < inputs.size(); ++i) tensors.push_back(MakeInput(inputs[i], input_dir, i, dev));
    for (const Tensor& t : tensors) args.push_back(t);
    ffi::Any result;
    run.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    std::vector<Tensor> outs;
    Flatten(result, &outs);
    if (outs.size() != outputs.size()) {
      throw std::runtime_error("the model returned " + std::to_string(outs.size()) + " outputs, the manifest lists " +
                               std::to_string(outputs.size()));
    }
    for (size_t i = 0; i < outs.size(); ++i) {
      size_t nbytes = NumBytes(outputs[i]);
      std::vector<char> bytes(nbytes);
      if (!outs[i].IsContiguous() || outs[i].byte_offset() != 0) throw std::runtime_error("non-contiguous output");
      std::memcpy(bytes.data(), outs[i].data_ptr(), nbytes);
      std::cout << outputs[i].name << ": " << outputs[i].dtype << "[";
      for (size_t d = 0; d < outputs[i].shape.size(); ++d) std::cout << (d ? ", " : "") << outputs[i].shape[d];
      std::cout << "]";
      if (outputs[i].dtype == "float32" && nbytes >= 4) {
        float first;
        std::memcpy(&first, bytes.data(), 4);
        std::cout << " first value " << first;
      }
      std::cout << "\n";
      if (!output_dir.empty()) {
        std::ofstream out(output_dir + "/output_" + std::to_string(i) + ".bin", std::ios::binary);
        out.write(bytes.data(), static_cast<std::streamsize>(nbytes));
      }
    }
    if (repeat > 0) {
      auto start = std::chrono::steady_clock::now();
      for (int r = 0; r < repeat; ++r) run.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      std::cout << "mean latency " << ms / repeat << " ms over " << repeat << " runs\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "graphopt_tvm_run: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
