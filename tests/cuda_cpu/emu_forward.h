/* One end-to-end check the emu tests share: a prepared layer's forward on
 * aligned device pointers (x random in the layer's dtype and layout, y and
 * the workspace NaN-filled, external routing weights drawn when the layer
 * takes them) against the double reference, with the dtype's tolerances
 * (f32: 1e-6 + 1e-5 of the magnitude). A mismatch is a test failure naming
 * `name`. */
#ifndef CONDCONV_EMU_FORWARD_H
#define CONDCONV_EMU_FORWARD_H

#include "condconv.h"
#include "test_util.h"

void eu_check_forward(condconv_layer_t layer, const char *name, const tu_layer_spec *s, condconv_dtype dtype,
                      condconv_layout layout, const tu_params *p, int n, int h, int w, int ho, int wo);

#endif
