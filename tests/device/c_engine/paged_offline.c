/* kgen_fa.c's paged planning without a device: the dispatcher compiled into this file, a context
 * made by hand for the table's first device with Vulkan entry points that create nothing, and
 * kgen_fa_paged_plan_call() run on it. Built as a shared library and driven through ctypes
 * (tests/unit/test_export_paged.py), so the split counts, push constants, grids and scratch of a
 * GPU's table can be compared with kgen's Python plan on a machine without that GPU. */
#include "kgen_fa.c"
#include "paged_call.h"

static VKAPI_ATTR VkResult VKAPI_CALL offline_create_module(VkDevice device, const VkShaderModuleCreateInfo *info,
                                                            const VkAllocationCallbacks *allocator, VkShaderModule *module) {
    (void)device; (void)info; (void)allocator;
    *module = (VkShaderModule)(uintptr_t)1u;
    return VK_SUCCESS;
}

static VKAPI_ATTR void VKAPI_CALL offline_destroy_module(VkDevice device, VkShaderModule module,
                                                         const VkAllocationCallbacks *allocator) {
    (void)device; (void)module; (void)allocator;
}

static VKAPI_ATTR VkResult VKAPI_CALL offline_create_pipelines(VkDevice device, VkPipelineCache cache, uint32_t n,
                                                               const VkComputePipelineCreateInfo *infos,
                                                               const VkAllocationCallbacks *allocator, VkPipeline *out) {
    uint32_t i;
    (void)device; (void)cache; (void)infos; (void)allocator;
    for (i = 0; i < n; ++i) out[i] = (VkPipeline)(uintptr_t)1u;
    return VK_SUCCESS;
}

/* Plans the call of ints and floats (as paged_call.h reads them); q_lens / seq_lens may be
 * NULL. push[] gets the push constants, groups[] 3 counts per step, scratch[] each scratch
 * range's bytes, report "variant|splits|steps|scratch ranges" or the status and message.
 * max_range: the context's maxStorageBufferRange. */
int kgen_offline_plan(const uint32_t *ints, const float *floats, const int32_t *q_lens, const int32_t *seq_lens,
                      uint64_t max_range, uint32_t *push, uint32_t *groups, uint64_t *scratch, char *report, size_t size) {
    kgen_fa_context ctx;
    kgen_fa_paged_call c;
    kgen_fa_plan plan;
    kgen_fa_message why;
    uint32_t i, n;
    int status;
    memset(&ctx, 0, sizeof ctx);
    ctx.size_control = 1u;
    ctx.max_groups[0] = ctx.max_groups[1] = ctx.max_groups[2] = 65535u;
    ctx.min_offset_alignment = 64u;
    ctx.max_storage_range = max_range;
    ctx.vkCreateShaderModule = offline_create_module;
    ctx.vkDestroyShaderModule = offline_destroy_module;
    ctx.vkCreateComputePipelines = offline_create_pipelines;
    KGEN_FA_LOCK_INIT_(&ctx.lock);
    paged_call_of(ints, floats, q_lens, seq_lens, &c);
    status = kgen_fa_paged_plan_call(&ctx, &c, &plan, &why);
    KGEN_FA_LOCK_FREE_(&ctx.lock);
    if (status != KGEN_FA_OK) {
        snprintf(report, size, "%s: %s", kgen_fa_status_name(status), why.text);
        return status;
    }
    memcpy(push, plan.push[0], sizeof plan.push[0]);
    for (i = 0; i < plan.step_count; ++i) memcpy(&groups[3 * i], plan.groups[i], sizeof plan.groups[i]);
    n = kgen_fa_paged_entries_[plan.entry - KGEN_FA_ENTRY_COUNT_].scratch_count;
    for (i = 0; i < n; ++i) scratch[i] = plan.scratch_size[i];
    snprintf(report, size, "%s|%u|%u|%u", plan.variant, plan.splits, plan.step_count, n);
    return status;
}
