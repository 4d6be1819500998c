# End-to-end tests: the real dashlm binary on real files. Each script exits 0 (pass), 77 (skip:
# an optional model is not downloaded) or anything else (fail).
find_package(Python3 REQUIRED COMPONENTS Interpreter)
get_filename_component(DASHLM_SHARED_DIR_E2E ${CMAKE_SOURCE_DIR}/../shared ABSOLUTE)
file(GLOB DASHLM_E2E_TESTS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/e2e/*.py)
foreach(script ${DASHLM_E2E_TESTS})
  get_filename_component(name ${script} NAME_WE)
  if(name STREQUAL "common" OR name STREQUAL "gguf_min")
    continue()
  endif()
  add_test(NAME e2e.${name}
           COMMAND ${Python3_EXECUTABLE} ${script} $<TARGET_FILE:dashlm> ${DASHLM_SHARED_DIR_E2E} ${CMAKE_SOURCE_DIR})
  set_tests_properties(e2e.${name} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 1800)
endforeach()
