# The CUDA engine: a static library for the GPU tests and benchmark, and a loadable module
# (libdashlm-cuda.so next to the dashlm executable) that `--backend cuda` opens at run time, so
# that the CLI itself never links the CUDA runtime and cuBLAS (runtime/engine_plugin.h).
# Included from the top-level CMakeLists.txt when DASHLM_CUDA is ON.
add_library(dashlm_runtime_cuda STATIC ${CMAKE_CURRENT_LIST_DIR}/engine_cuda.cpp)
target_link_libraries(dashlm_runtime_cuda PUBLIC dashlm_runtime dashlm_backend_cuda)
target_compile_definitions(dashlm_runtime_cuda PUBLIC DASHLM_HAVE_CUDA=1)
target_compile_options(dashlm_runtime_cuda PRIVATE ${DASHLM_WARNINGS})

add_library(dashlm-cuda MODULE ${CMAKE_CURRENT_LIST_DIR}/engine_cuda_plugin.cpp)
target_link_libraries(dashlm-cuda PRIVATE dashlm_runtime_cuda)
target_compile_options(dashlm-cuda PRIVATE ${DASHLM_WARNINGS})
set_target_properties(dashlm-cuda PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}
  CXX_VISIBILITY_PRESET hidden)
add_dependencies(dashlm dashlm-cuda)
