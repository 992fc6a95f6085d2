// The Python module exprfast._C: importing it registers the torch.library ops (static
// initialisers of up_label_conv.cpp); it also tells Python what this build contains.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "exprfast C++/CUDA kernels; the ops live in torch.ops.exprfast";
  m.def("build_info", [] {
    py::dict info;
    info["torch_version"] = EXPRFAST_TORCH_VERSION;
#ifdef EXPRFAST_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cpu"] = true;
    info["parallel"] = at::get_parallel_info();
    // Whether at::parallel_for in the op's CPU kernels can use more than one thread (CMakeLists).
#ifdef _OPENMP
    info["cpu_kernels_parallel"] = true;
#else
    info["cpu_kernels_parallel"] = false;
#endif
    return info;
  });
}
