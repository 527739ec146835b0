// Non-linear 4-bit types: IQ4_NL (32 floats a block) and IQ4_XS (256 floats a block).
#include "ggufkit_quants.h"

// ---- table

const gk_type_traits gk_iq4_types[] = {
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
