# One nanobind extension per area: csrc/bindings/<area>.cpp -> fastpaper._<area>.
find_package(Python 3.9 REQUIRED COMPONENTS Interpreter Development.Module
  OPTIONAL_COMPONENTS Development.SABIModule)
find_package(nanobind CONFIG REQUIRED)
file(GLOB _fp_binding_sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/csrc/bindings/*.cpp)
foreach(_src IN LISTS _fp_binding_sources)
  get_filename_component(_area ${_src} NAME_WE)
  nanobind_add_module(_${_area} STABLE_ABI NB_STATIC ${_src})
  target_link_libraries(_${_area} PRIVATE fastpaper_core)
  target_include_directories(_${_area} PRIVATE ${PROJECT_SOURCE_DIR}/csrc)
  # the core library sits in fastpaper/lib next to the modules
  set_target_properties(_${_area} PROPERTIES INSTALL_RPATH "$ORIGIN/lib")
  install(TARGETS _${_area} LIBRARY DESTINATION .)
endforeach()
