#version 450
// Compiler probe: a GLSL compiler that accepts this knows both cooperative-matrix extensions
// kgen's tensor-core paths use (bootstrap.sh and kgen.toolchain compile it to decide).
#extension GL_KHR_cooperative_matrix : require
#extension GL_NV_cooperative_matrix2 : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
layout(local_size_x = 32) in;
layout(std430, binding = 0) buffer Buf { float16_t data[]; };
void main() {
    tensorLayoutNV<2> layout2d = createTensorLayoutNV(2);
    layout2d = setTensorLayoutDimensionNV(layout2d, 16, 16);
    coopmat<float16_t, gl_ScopeWorkgroup, 16, 16, gl_MatrixUseA> a;
    coopMatLoadTensorNV(a, data, 0, layout2d);
    coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> c =
        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
    coopMatStore(c, data, 0, 16, gl_CooperativeMatrixLayoutRowMajor);
}
