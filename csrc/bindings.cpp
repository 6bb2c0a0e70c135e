// Python bindings of the cache reader: klas._C. Users call the typed wrappers in klas/cache/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "crc32c.h"
#include "shard.h"
#include "stream_reader.h"

namespace py = pybind11;

namespace {

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
  m.doc() = "klas native extension: CRC-32C and the streaming activation-cache reader.";

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

  m.attr("SHARD_HEADER_BYTES") = klas::kShardHeaderBytes;
  m.attr("SHARD_VERSION") = klas::kShardVersion;

  py::class_<klas::ShardSpec>(m, "ShardSpec", "What the manifest says one shard file holds.")
      .def(py::init([](std::string path, uint64_t rows, uint32_t crc) {
             return klas::ShardSpec{std::move(path), rows, crc};
           }),
           py::arg("path"), py::arg("rows"), py::arg("crc32c"))
      .def_readonly("path", &klas::ShardSpec::path)
      .def_readonly("rows", &klas::ShardSpec::rows)
      .def_readonly("crc32c", &klas::ShardSpec::crc32c);

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
