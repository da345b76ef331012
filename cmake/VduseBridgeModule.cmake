# vb_module(NAME SOURCES... [DEPS targets...])
# Every module is a static library with the project's include directory, so tests link it without main().
function(vb_module name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/src
                                                 ${PROJECT_SOURCE_DIR}/backends)
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()
