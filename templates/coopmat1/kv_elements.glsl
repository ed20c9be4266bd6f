{#- K and V bound a second time as uvec4 arrays: the direct, stream, regs and osplit schedules
    load them in 16-byte units. #}

// K and V as 16-byte elements (8 halves): the direct schedule loads matrix operands straight
// from here, the stream, regs and osplit schedules copy whole tiles to shared memory in these units.
// Offsets and row strides are multiples of 8 halves (kgen.planning checks them).
layout(std430, binding = {{ binding.k }}) readonly buffer KDirect { uvec4 k_direct[]; };
layout(std430, binding = {{ binding.v }}) readonly buffer VDirect { uvec4 v_direct[]; };
