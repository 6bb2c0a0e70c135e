// Python bindings of the cache reader: klas._C. Users call the typed wrappers in klas/cache/.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "crc32c.h"
#include "shard.h"
#include "stream_reader.h"
#include "theta_cpu.h"

namespace py = pybind11;

namespace {

// A float32 [K, N, C] array with contiguous classes, as the Θ kernel reads it.
klas::LogitRows logit_rows(const py::object& obj, const char* name) {
  if (!py::isinstance<py::array_t<float>>(obj)) throw std::invalid_argument(std::string(name) + " must be a float32 array");
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (arr.ndim() != 3) throw std::invalid_argument(std::string(name) + " must be [K, N, C]");
  const auto f = static_cast<py::ssize_t>(sizeof(float));
  if (arr.strides(2) != f || arr.strides(0) % f != 0 || arr.strides(1) % f != 0)
    throw std::invalid_argument(std::string(name) + " must be contiguous along classes");
  return {static_cast<const float*>(arr.data()), arr.shape(0), arr.shape(1), arr.shape(2), arr.strides(0) / f,
          arr.strides(1) / f};
}

// The Θ kernel's code paths by name: what `theta_sums` accepts and what THETA_ISAS lists.
const std::vector<std::pair<std::string, klas::ThetaIsa>> kThetaIsas{{"auto", klas::ThetaIsa::kAuto},
                                                                     {"baseline", klas::ThetaIsa::kBaseline},
                                                                     {"avx2", klas::ThetaIsa::kAvx2},
                                                                     {"avx512", klas::ThetaIsa::kAvx512}};

// A writable C-contiguous float64 array of `size` elements.
double* float64_sums(const py::object& obj, const char* name, py::ssize_t size) {
  if (!py::isinstance<py::array_t<double>>(obj)) throw std::invalid_argument(std::string(name) + " must be a float64 array");
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!(arr.flags() & py::array::c_style) || !arr.writeable() || arr.size() != size)
    throw std::invalid_argument(std::string(name) + " must be a writable C-contiguous array of " + std::to_string(size) +
                                " elements");
  return static_cast<double*>(arr.mutable_data());
}

// Wraps `ptr` in a NumPy array that keeps the slot lease alive until the array is freed.
template <typename T>
py::array_t<T> view_of_slot(const T* ptr, std::vector<py::ssize_t> shape,
                            const std::shared_ptr<klas::SlotLease>& lease) {
  auto* keep = new std::shared_ptr<klas::SlotLease>(lease);
  py::capsule owner(keep, [](void* p) {
    // Returning the slot takes the ring's lock, never the GIL.
    delete static_cast<std::shared_ptr<klas::SlotLease>*>(p);
  });
  // Writable: the slot is not reused while any view of it lives, so writes only touch this batch.
  return py::array_t<T>(shape, ptr, owner);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "klas native extension: CRC-32C, the streaming activation-cache reader, the CPU Θ kernel.";

  // Cache problems raise klas.errors.CacheError, the same class the pure-Python reader raises.
  // The class object lives as long as the interpreter: its reference is kept on purpose.
  static PyObject* cache_error = py::object(py::module_::import("klas.errors").attr("CacheError")).release().ptr();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const klas::CacheError& e) {
      PyErr_SetString(cache_error, e.what());
    }
  });

  m.def(
      "crc32c",
      [](py::buffer data, uint32_t crc) {
        py::buffer_info info = data.request();
        if (!PyBuffer_IsContiguous(info.view(), 'C'))
          throw std::invalid_argument("crc32c needs a C-contiguous buffer");
        const auto* ptr = info.ptr;
        const size_t size = static_cast<size_t>(info.size * info.itemsize);
        py::gil_scoped_release release;
        return klas::crc32c_extend(crc, ptr, size);
      },
      py::arg("data"), py::arg("crc") = 0,
      "CRC-32C of a contiguous buffer, continuing from `crc` (the value of the bytes before).");

  m.def(
      "theta_sums",
      [](const py::object& src, const py::object& tgt, float inv_temperature, const py::object& self_term,
         const py::object& cross, const py::object& shift, int threads, int64_t block_bytes, const std::string& isa,
         float max_abs_logit) {
        const auto chosen = std::find_if(kThetaIsas.begin(), kThetaIsas.end(), [&](const auto& e) { return e.first == isa; });
        if (chosen == kThetaIsas.end()) throw std::invalid_argument("isa must be auto, baseline, avx2 or avx512, got " + isa);
        const klas::LogitRows s = logit_rows(src, "src");
        klas::LogitRows t{};
        if (!tgt.is_none()) {
          t = logit_rows(tgt, "tgt");
          if (t.samples != s.samples || t.classes != s.classes)
            throw std::invalid_argument("src and tgt must have the same N and C");
        }
        if (s.probes == 0 || s.samples == 0 || s.classes == 0 || (!tgt.is_none() && t.probes == 0))
          throw std::invalid_argument("src and tgt must not be empty");
        if (!(inv_temperature > 0.0f && std::isfinite(inv_temperature)))
          throw std::invalid_argument("inv_temperature must be positive and finite");
        const py::ssize_t kt = tgt.is_none() ? s.probes : t.probes;
        const klas::ThetaSums sums{float64_sums(self_term, "self_term", s.probes),
                                   float64_sums(cross, "cross", s.probes * kt), float64_sums(shift, "shift", kt)};
        if (std::isnan(max_abs_logit) || max_abs_logit < 0.0f)
          throw std::invalid_argument("max_abs_logit must be a number >= 0 (inf: no bound)");
        py::gil_scoped_release release;
        return klas::theta_sums(s, tgt.is_none() ? nullptr : &t, inv_temperature, sums, threads, block_bytes,
                                chosen->second, max_abs_logit);
      },
      py::arg("src"), py::arg("tgt"), py::arg("inv_temperature"), py::arg("self_term"), py::arg("cross"),
      py::arg("shift"), py::arg("threads") = 1, py::arg("block_bytes") = 0, py::arg("isa") = "auto",
      py::arg("max_abs_logit") = std::numeric_limits<float>::infinity(),
      "Adds the Θ sums of logits src float32 [Ks, N, C] against tgt [Kt, N, C] (None: src against\n"
      "itself), classes contiguous, to the float64 arrays self_term [Ks] (sum of p log p), cross\n"
      "[Ks, Kt] (sum of p_a u_b) and shift [Kt] (sum of log-sum-exp); see csrc/theta_cpu.h.\n"
      "block_bytes: the per-thread buffer of one block of samples (0: default); isa: auto, baseline,\n"
      "avx2 or avx512 (one this CPU supports; see THETA_ISAS). Returns the largest |logit| read (inf\n"
      "if any is NaN or +-Inf); when it exceeds max_abs_logit nothing is added.");
  {
    py::list supported;
    for (const auto& [name, isa] : kThetaIsas)
      if (isa != klas::ThetaIsa::kAuto && klas::theta_isa_supported(isa)) supported.append(name);
    m.attr("THETA_ISAS") = py::tuple(supported);
  }

  m.attr("SHARD_HEADER_BYTES") = klas::kShardHeaderBytes;
  m.attr("SHARD_VERSION") = klas::kShardVersion;

  py::class_<klas::ShardSpec>(m, "ShardSpec", "What the manifest says one shard file holds.")
      .def(py::init([](std::string path, uint64_t rows, uint32_t crc, uint64_t index, uint64_t first_row) {
             return klas::ShardSpec{std::move(path), rows, crc, index, first_row};
           }),
           py::arg("path"), py::arg("rows"), py::arg("crc32c"), py::arg("index") = 0, py::arg("first_row") = 0)
      .def_readonly("path", &klas::ShardSpec::path)
      .def_readonly("rows", &klas::ShardSpec::rows)
      .def_readonly("crc32c", &klas::ShardSpec::crc32c)
      .def_readonly("index", &klas::ShardSpec::index)
      .def_readonly("first_row", &klas::ShardSpec::first_row);

  py::class_<klas::ShardSet, std::shared_ptr<klas::ShardSet>>(
      m, "ShardSet",
      "The memory-mapped shards of one cache; each shard is opened and checksummed once.")
      .def(py::init<std::vector<klas::ShardSpec>, uint64_t, uint32_t, bool>(), py::arg("specs"),
           py::arg("row_bytes"), py::arg("dtype_code"), py::arg("verify") = true)
      .def_property_readonly("num_rows", &klas::ShardSet::num_rows)
      .def_property_readonly("row_bytes", &klas::ShardSet::row_bytes)
      .def("check_all", &klas::ShardSet::check_all, py::call_guard<py::gil_scoped_release>(),
           "Open and verify every shard now; raises CacheError naming the first bad one.");

  py::class_<klas::StreamReader>(
      m, "StreamReader",
      "Batches of rows over ordered row ranges, read ahead on a background thread.\n\n"
      "next() returns (features uint8 [rows, row_bytes], labels int64 [rows]) as read-only\n"
      "zero-copy arrays, or None at the end.")
      .def(py::init([](std::shared_ptr<klas::ShardSet> shards,
                       const std::vector<std::pair<uint64_t, uint64_t>>& ranges,
                       uint64_t batch_size, bool drop_last, size_t num_buffers) {
             std::vector<klas::RowRange> rr;
             rr.reserve(ranges.size());
             for (const auto& r : ranges) rr.push_back({r.first, r.second});
             return std::make_unique<klas::StreamReader>(std::move(shards), std::move(rr),
                                                         batch_size, drop_last, num_buffers);
           }),
           py::arg("shards"), py::arg("ranges"), py::arg("batch_size"),
           py::arg("drop_last") = false, py::arg("num_buffers") = 4)
      .def_property_readonly("num_batches", &klas::StreamReader::num_batches)
      .def_property_readonly("num_rows", &klas::StreamReader::num_rows)
      .def("next", [](klas::StreamReader& self) -> py::object {
        klas::Batch batch;
        {
          py::gil_scoped_release release;
          batch = self.next();
        }
        if (batch.rows == 0) return py::none();
        const auto rows = static_cast<py::ssize_t>(batch.rows);
        const auto row_bytes = static_cast<py::ssize_t>(self.row_bytes());
        auto features = view_of_slot<uint8_t>(batch.features, {rows, row_bytes}, batch.lease);
        auto labels = view_of_slot<int64_t>(batch.labels, {rows}, batch.lease);
        return py::make_tuple(std::move(features), std::move(labels));
      });
}
