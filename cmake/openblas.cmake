# BLAS/LAPACK for the CPU Krylov solver: the OpenBLAS that numpy and scipy ship on PyPI
# (`scipy-openblas32`: 32-bit integers, every symbol prefixed `scipy_`, headers included).
# FASTPAPER_OPENBLAS_DIR is the package directory (holding include/ and lib/); when empty it is
# asked from the Python interpreter, where pip's build isolation has installed the package
# (pyproject.toml [build-system] requires).
# The detected path is not cached: pip's isolated build environment lives in a new temporary
# directory on every build, while the build directory (and its cache) is kept.
set(FASTPAPER_OPENBLAS_DIR "" CACHE PATH "Directory of the scipy_openblas32 Python package")
set(_fp_openblas_dir "${FASTPAPER_OPENBLAS_DIR}")
if(NOT _fp_openblas_dir)
  if(NOT Python_EXECUTABLE)
    find_package(Python 3.9 REQUIRED COMPONENTS Interpreter)
  endif()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import os, scipy_openblas32 as s; print(os.path.dirname(s.__file__))"
    OUTPUT_VARIABLE _fp_openblas_dir OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _fp_openblas_rc ERROR_QUIET)
  if(NOT _fp_openblas_rc EQUAL 0 OR NOT _fp_openblas_dir)
    message(FATAL_ERROR "fastpaper needs scipy-openblas32 (pip install scipy-openblas32) for the "
      "Krylov solver, or -DFASTPAPER_OPENBLAS_DIR=<its package directory>; ${Python_EXECUTABLE} "
      "could not import it")
  endif()
endif()
set(FASTPAPER_OPENBLAS_LIBRARY "${_fp_openblas_dir}/lib/libscipy_openblas.so")
if(NOT EXISTS "${FASTPAPER_OPENBLAS_LIBRARY}" OR NOT EXISTS "${_fp_openblas_dir}/include/lapacke.h")
  message(FATAL_ERROR "no lib/libscipy_openblas.so and include/lapacke.h under ${_fp_openblas_dir}")
endif()
add_library(fastpaper_openblas SHARED IMPORTED)
set_target_properties(fastpaper_openblas PROPERTIES
  IMPORTED_LOCATION "${FASTPAPER_OPENBLAS_LIBRARY}"
  INTERFACE_INCLUDE_DIRECTORIES "${_fp_openblas_dir}/include")
message(STATUS "fastpaper: OpenBLAS ${FASTPAPER_OPENBLAS_LIBRARY}")
