/* The minimal engine of host.c running paged calls: kgen_fa_paged_plan_call(), then
 * kgen_fa_record() with the block table, sequence lengths and query starts bound, into its own
 * command buffer. Built with the exported kgen_fa.c and driven through ctypes
 * (tests/device/test_engine_c_paged.py); kgen_host_open / kgen_host_close come from host.c. */
#include "host.c"
#include "paged_call.h"

enum { PAGED_MEMBERS = sizeof(kgen_fa_buffers) / sizeof(kgen_fa_buffer) };

/* One paged call. data[i]/bytes[i]: the kgen_fa_buffers member i's contents (q, k, v, sinks,
 * block_table, seq_lens, cu_seqlens_q; NULL/0 for the others: o and scratch are made here).
 * `drop` >= 0 passes member `drop` as VK_NULL_HANDLE, 100 + i member i with a range 4 bytes
 * short. push[] gets the plan's push constants
 * (KGEN_FA_PUSH_WORDS words), `report` "variant|spec|splits|scratch_bytes|steps" or the status and
 * its message. Returns a kgen_fa_status, or 100 (a host error). */
int kgen_paged_run(const uint32_t *ints, const float *floats, const int32_t *q_lens, const int32_t *seq_lens,
                   const void *const *data, const uint64_t *bytes, float *o, uint64_t o_bytes, int drop,
                   uint32_t *push, char *report, size_t size) {
    kgen_fa_paged_call call;
    kgen_fa_plan plan;
    kgen_fa_message why;
    kgen_fa_buffers bufs;
    kgen_fa_buffer *slots = &bufs.q;
    host_buffer hb[PAGED_MEMBERS];
    VkCommandBufferBeginInfo begin;
    VkSubmitInfo submit;
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    VkFence fence = VK_NULL_HANDLE;
    VkFenceCreateInfo fence_info;
    int status, i;
    VkResult r;

    paged_call_of(ints, floats, q_lens, seq_lens, &call);
    status = kgen_fa_paged_plan_call(host.ctx, &call, &plan, &why);
    if (status != KGEN_FA_OK) {
        snprintf(report, size, "%s: %s", kgen_fa_status_name((kgen_fa_status)status), why.text);
        return status;
    }
    snprintf(report, size, "%s|%s|%u|%llu|%u", plan.variant, plan.problem, plan.splits,
             (unsigned long long)plan.scratch_bytes, plan.step_count);
    memcpy(push, plan.push[0], sizeof plan.push[0]);
    memset(hb, 0, sizeof hb);
    memset(&bufs, 0, sizeof bufs);
    for (i = 0; i < PAGED_MEMBERS; ++i) {
        const VkDeviceSize n = &slots[i] == &bufs.o ? o_bytes : &slots[i] == &bufs.scratch ? plan.scratch_bytes : bytes[i];
        if (n == 0) continue;
        r = host_buffer_create(&hb[i], n);
        if (r != VK_SUCCESS) { status = fail(report, size, "host buffer", r); goto done; }
        if (data[i] != NULL) memcpy(hb[i].mapped, data[i], (size_t)n);
        else memset(hb[i].mapped, 0xff, (size_t)hb[i].size);   /* NaN: a row the call skips shows */
        slots[i].buffer = hb[i].buffer;
        slots[i].range = n;   /* the exact sizes: the record checks them */
    }
    if (drop >= 0 && drop < PAGED_MEMBERS) slots[drop].buffer = VK_NULL_HANDLE;
    if (drop >= 100 && drop < 100 + PAGED_MEMBERS && slots[drop - 100].range >= 4u) slots[drop - 100].range -= 4u;
    r = host_command_buffer(&cmd);
    if (r != VK_SUCCESS) { status = fail(report, size, "vkAllocateCommandBuffers", r); goto done; }
    memset(&fence_info, 0, sizeof fence_info);
    fence_info.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO;
    r = vkCreateFence(host.device, &fence_info, NULL, &fence);
    if (r != VK_SUCCESS) { status = fail(report, size, "vkCreateFence", r); goto done; }
    memset(&begin, 0, sizeof begin);
    begin.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
    begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    vkBeginCommandBuffer(cmd, &begin);
    status = kgen_fa_record(host.ctx, &plan, cmd, &bufs, &why);
    vkEndCommandBuffer(cmd);
    if (status != KGEN_FA_OK) {
        snprintf(report, size, "%s: %s", kgen_fa_status_name((kgen_fa_status)status), why.text);
        goto done;
    }
    memset(&submit, 0, sizeof submit);
    submit.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO;
    submit.commandBufferCount = 1;
    submit.pCommandBuffers = &cmd;
    r = vkQueueSubmit(host.queue, 1, &submit, fence);
    if (r == VK_SUCCESS) r = vkWaitForFences(host.device, 1, &fence, VK_TRUE, UINT64_MAX);
    if (r != VK_SUCCESS) { status = fail(report, size, "vkQueueSubmit/vkWaitForFences", r); goto done; }
    memcpy(o, hb[(kgen_fa_buffer *)&bufs.o - slots].mapped, (size_t)o_bytes);
done:
    if (fence != VK_NULL_HANDLE) vkDestroyFence(host.device, fence, NULL);
    if (cmd != VK_NULL_HANDLE) vkFreeCommandBuffers(host.device, host.pool, 1, &cmd);
    for (i = 0; i < PAGED_MEMBERS; ++i) host_buffer_destroy(&hb[i]);
    kgen_fa_context_recycle(host.ctx);
    return status;
}
