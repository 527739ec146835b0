// K-quant super-block types (256 floats a block): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
#include "ggufkit_quants.h"

// ---- table

const gk_type_traits gk_kquant_types[] = {
    {0, NULL, 0, 0, NULL, NULL, NULL, NULL},
};
