/* A minimal Vulkan engine around kgen_fa.c, for the tests: it opens a device the way an engine
 * would (its own instance, device, queue and buffers), plans a call with kgen_fa_plan_call(),
 * records it with kgen_fa_record() into its own command buffer, submits, and copies O back.
 * Built as a shared library with the exported kgen_fa.c and driven through ctypes
 * (tests/device/test_engine_c.py). Host-visible buffers keep it short; speed is not its job. */
#if !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L   /* clock_gettime */
#endif
#include "kgen_fa.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Structs newer than some Vulkan headers (VK_KHR_cooperative_matrix, VK_NV_cooperative_matrix2). */
typedef struct {
    VkStructureType sType;
    void *pNext;
    VkBool32 bits[2];
} host_coopmat_features;
typedef struct {
    VkStructureType sType;
    void *pNext;
    VkBool32 bits[7];
} host_coopmat2_features;
#define HOST_STYPE_COOPMAT_FEATURES ((VkStructureType)1000506000)
#define HOST_STYPE_COOPMAT2_FEATURES ((VkStructureType)1000593000)

enum { HOST_BUFFERS = 8 };   /* q, k, v, mask, sinks, o, scratch, state */

static struct {
    VkInstance instance;
    VkDebugUtilsMessengerEXT messenger;
    VkPhysicalDevice physical;
    VkDevice device;
    VkQueue queue;
    uint32_t family;
    VkCommandPool pool;
    VkPhysicalDeviceMemoryProperties memory;
    float timestamp_period;   /* ns per tick */
    kgen_fa_context *ctx;
    int validation_errors;
} host;

static VKAPI_ATTR VkBool32 VKAPI_CALL host_on_message(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                      VkDebugUtilsMessageTypeFlagsEXT types,
                                                      const VkDebugUtilsMessengerCallbackDataEXT *data, void *user) {
    (void)types;
    (void)user;
    if (severity & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) {
        host.validation_errors += 1;
        fprintf(stderr, "validation: %s\n", data->pMessage);
    }
    return VK_FALSE;
}

static int has_extension(const VkExtensionProperties *list, uint32_t n, const char *name) {
    uint32_t i;
    for (i = 0; i < n; ++i) {
        if (strcmp(list[i].extensionName, name) == 0) return 1;
    }
    return 0;
}

static int fail(char *message, size_t size, const char *what, VkResult r) {
    snprintf(message, size, "%s failed: VkResult %d", what, (int)r);
    return 100;
}

int kgen_host_validation_errors(void) { return host.validation_errors; }

void kgen_host_close(void) {
    if (host.ctx != NULL) kgen_fa_context_destroy(host.ctx);
    if (host.pool != VK_NULL_HANDLE) vkDestroyCommandPool(host.device, host.pool, NULL);
    if (host.device != VK_NULL_HANDLE) vkDestroyDevice(host.device, NULL);
    if (host.messenger != VK_NULL_HANDLE) {
        PFN_vkDestroyDebugUtilsMessengerEXT destroy =
            (PFN_vkDestroyDebugUtilsMessengerEXT)vkGetInstanceProcAddr(host.instance, "vkDestroyDebugUtilsMessengerEXT");
        destroy(host.instance, host.messenger, NULL);
    }
    if (host.instance != VK_NULL_HANDLE) vkDestroyInstance(host.instance, NULL);
    memset(&host, 0, sizeof host);
}

/* Opens physical device `index` with every core 1.1-1.3 feature it has (and the cooperative
 * matrix ones where it lists them); `push_descriptor` enables VK_KHR_push_descriptor and tells
 * the dispatcher. Returns 0, a kgen_fa_status of context creation, or 100 (a host error). */
int kgen_host_open(int index, int validation, int push_descriptor, char *message, size_t size) {
    const char *layer = "VK_LAYER_KHRONOS_validation";
    const char *instance_extensions[1] = { VK_EXT_DEBUG_UTILS_EXTENSION_NAME };
    const char *device_extensions[4];
    VkApplicationInfo app;
    VkInstanceCreateInfo instance_info;
    VkDebugUtilsMessengerCreateInfoEXT messenger_info;
    VkPhysicalDevice physical[16];
    VkExtensionProperties *extensions;
    VkQueueFamilyProperties families[16];
    VkPhysicalDeviceFeatures2 features;
    VkPhysicalDeviceVulkan11Features f11;
    VkPhysicalDeviceVulkan12Features f12;
    VkPhysicalDeviceVulkan13Features f13;
    host_coopmat_features coopmat;
    host_coopmat2_features coopmat2;
    VkDeviceQueueCreateInfo queue_info;
    VkDeviceCreateInfo device_info;
    VkCommandPoolCreateInfo pool_info;
    kgen_fa_context_info ctx_info;
    kgen_fa_message why;
    uint32_t n = 16, n_ext = 0, n_families = 16, n_enabled = 0;
    float priority = 1.0f;
    void **tail;
    VkResult r;
    int status;

    memset(&host, 0, sizeof host);
    memset(&app, 0, sizeof app);
    app.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO;
    app.pApplicationName = "kgen-c-engine-test";
    app.apiVersion = VK_API_VERSION_1_3;
    memset(&messenger_info, 0, sizeof messenger_info);
    messenger_info.sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT;
    messenger_info.messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT;
    messenger_info.messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT;
    messenger_info.pfnUserCallback = host_on_message;
    memset(&instance_info, 0, sizeof instance_info);
    instance_info.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
    instance_info.pApplicationInfo = &app;
    if (validation) {
        instance_info.enabledLayerCount = 1;
        instance_info.ppEnabledLayerNames = &layer;
        instance_info.enabledExtensionCount = 1;
        instance_info.ppEnabledExtensionNames = instance_extensions;
    }
    r = vkCreateInstance(&instance_info, NULL, &host.instance);
    if (r != VK_SUCCESS) return fail(message, size, "vkCreateInstance", r);
    if (validation) {
        PFN_vkCreateDebugUtilsMessengerEXT create =
            (PFN_vkCreateDebugUtilsMessengerEXT)vkGetInstanceProcAddr(host.instance, "vkCreateDebugUtilsMessengerEXT");
        r = create(host.instance, &messenger_info, NULL, &host.messenger);
        if (r != VK_SUCCESS) return fail(message, size, "vkCreateDebugUtilsMessengerEXT", r);
    }
    r = vkEnumeratePhysicalDevices(host.instance, &n, physical);
    if ((r != VK_SUCCESS && r != VK_INCOMPLETE) || index < 0 || (uint32_t)index >= n) {
        snprintf(message, size, "physical device %d: %u device(s)", index, n);
        return 100;
    }
    host.physical = physical[index];
    vkGetPhysicalDeviceMemoryProperties(host.physical, &host.memory);
    {
        VkPhysicalDeviceProperties props;
        vkGetPhysicalDeviceProperties(host.physical, &props);
        host.timestamp_period = props.limits.timestampPeriod;
    }
    vkGetPhysicalDeviceQueueFamilyProperties(host.physical, &n_families, families);
    for (host.family = 0; host.family < n_families; ++host.family) {
        if (families[host.family].queueFlags & VK_QUEUE_COMPUTE_BIT) break;
    }
    vkEnumerateDeviceExtensionProperties(host.physical, NULL, &n_ext, NULL);
    extensions = (VkExtensionProperties *)calloc(n_ext ? n_ext : 1, sizeof *extensions);
    vkEnumerateDeviceExtensionProperties(host.physical, NULL, &n_ext, extensions);

    memset(&features, 0, sizeof features);
    memset(&f11, 0, sizeof f11);
    memset(&f12, 0, sizeof f12);
    memset(&f13, 0, sizeof f13);
    memset(&coopmat, 0, sizeof coopmat);
    memset(&coopmat2, 0, sizeof coopmat2);
    features.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2;
    f11.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES;
    f12.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES;
    f13.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_FEATURES;
    coopmat.sType = HOST_STYPE_COOPMAT_FEATURES;
    coopmat2.sType = HOST_STYPE_COOPMAT2_FEATURES;
    features.pNext = &f11;
    f11.pNext = &f12;
    f12.pNext = &f13;
    tail = &f13.pNext;
    if (has_extension(extensions, n_ext, "VK_KHR_cooperative_matrix")) {
        device_extensions[n_enabled++] = "VK_KHR_cooperative_matrix";
        *tail = &coopmat;
        tail = &coopmat.pNext;
    }
    if (has_extension(extensions, n_ext, "VK_NV_cooperative_matrix2")) {
        device_extensions[n_enabled++] = "VK_NV_cooperative_matrix2";
        *tail = &coopmat2;
        tail = &coopmat2.pNext;
    }
    if (push_descriptor) {
        if (!has_extension(extensions, n_ext, VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME)) {
            free(extensions);
            snprintf(message, size, "the device has no VK_KHR_push_descriptor");
            return 100;
        }
        device_extensions[n_enabled++] = VK_KHR_PUSH_DESCRIPTOR_EXTENSION_NAME;
    }
    free(extensions);
    vkGetPhysicalDeviceFeatures2(host.physical, &features);
    f11.protectedMemory = VK_FALSE;   /* no protected queue here */

    memset(&queue_info, 0, sizeof queue_info);
    queue_info.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO;
    queue_info.queueFamilyIndex = host.family;
    queue_info.queueCount = 1;
    queue_info.pQueuePriorities = &priority;
    memset(&device_info, 0, sizeof device_info);
    device_info.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO;
    device_info.pNext = &features;
    device_info.queueCreateInfoCount = 1;
    device_info.pQueueCreateInfos = &queue_info;
    device_info.enabledExtensionCount = n_enabled;
    device_info.ppEnabledExtensionNames = device_extensions;
    r = vkCreateDevice(host.physical, &device_info, NULL, &host.device);
    if (r != VK_SUCCESS) return fail(message, size, "vkCreateDevice", r);
    vkGetDeviceQueue(host.device, host.family, 0, &host.queue);
    memset(&pool_info, 0, sizeof pool_info);
    pool_info.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO;
    pool_info.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    pool_info.queueFamilyIndex = host.family;
    r = vkCreateCommandPool(host.device, &pool_info, NULL, &host.pool);
    if (r != VK_SUCCESS) return fail(message, size, "vkCreateCommandPool", r);

    memset(&ctx_info, 0, sizeof ctx_info);
    ctx_info.instance = host.instance;
    ctx_info.physical_device = host.physical;
    ctx_info.device = host.device;
    ctx_info.get_instance_proc_addr = vkGetInstanceProcAddr;
    ctx_info.push_descriptor = push_descriptor != 0;
    ctx_info.subgroup_size_control = f13.subgroupSizeControl;
    ctx_info.compute_full_subgroups = f13.computeFullSubgroups;
    status = kgen_fa_context_create(&ctx_info, &host.ctx, &why);
    if (status != KGEN_FA_OK) snprintf(message, size, "%s: %s", kgen_fa_status_name((kgen_fa_status)status), why.text);
    return status;
}

typedef struct host_buffer {
    VkBuffer buffer;
    VkDeviceMemory memory;
    void *mapped;
    VkDeviceSize size;
} host_buffer;

static VkResult host_buffer_alloc(host_buffer *b, VkDeviceSize size, VkMemoryPropertyFlags want);

static VkResult host_buffer_create(host_buffer *b, VkDeviceSize size) {
    return host_buffer_alloc(b, size, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT);
}

static VkResult host_buffer_alloc(host_buffer *b, VkDeviceSize size, VkMemoryPropertyFlags want) {
    VkBufferCreateInfo info;
    VkMemoryRequirements req;
    VkMemoryAllocateInfo alloc;
    VkResult r;
    uint32_t t;
    memset(b, 0, sizeof *b);
    b->size = size < 16 ? 16 : size;
    memset(&info, 0, sizeof info);
    info.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO;
    info.size = b->size;
    info.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT;
    r = vkCreateBuffer(host.device, &info, NULL, &b->buffer);
    if (r != VK_SUCCESS) return r;
    vkGetBufferMemoryRequirements(host.device, b->buffer, &req);
    for (t = 0; t < host.memory.memoryTypeCount; ++t) {
        if ((req.memoryTypeBits & (1u << t)) && (host.memory.memoryTypes[t].propertyFlags & want) == want) break;
    }
    if (t == host.memory.memoryTypeCount) return VK_ERROR_OUT_OF_DEVICE_MEMORY;
    memset(&alloc, 0, sizeof alloc);
    alloc.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO;
    alloc.allocationSize = req.size;
    alloc.memoryTypeIndex = t;
    r = vkAllocateMemory(host.device, &alloc, NULL, &b->memory);
    if (r != VK_SUCCESS) return r;
    r = vkBindBufferMemory(host.device, b->buffer, b->memory, 0);
    if (r != VK_SUCCESS || !(want & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT)) return r;
    return vkMapMemory(host.device, b->memory, 0, VK_WHOLE_SIZE, 0, &b->mapped);
}

static void host_buffer_destroy(host_buffer *b) {
    if (b->memory != VK_NULL_HANDLE) vkFreeMemory(host.device, b->memory, NULL);
    if (b->buffer != VK_NULL_HANDLE) vkDestroyBuffer(host.device, b->buffer, NULL);
}

/* The call of kgen_host_run's ints and floats. */
static void host_call_of(const uint32_t *ints, const float *floats, kgen_fa_call *c) {
    int i;
    memset(c, 0, sizeof *c);
    c->head_k = ints[0]; c->head_v = ints[1]; c->k_type = ints[2]; c->v_type = ints[3];
    c->features = ints[4]; c->acc = ints[5]; c->v_in_k = ints[6];
    c->n_batch = ints[7]; c->n_head_q = ints[8]; c->n_head_kv = ints[9]; c->n_q = ints[10]; c->n_kv = ints[11];
    for (i = 0; i < 3; ++i) c->k_stride[i] = ints[12 + i];
    c->k_offset = ints[15];
    for (i = 0; i < 3; ++i) c->v_stride[i] = ints[16 + i];
    c->v_offset = ints[19];
    c->mask_batch = ints[20]; c->mask_heads = ints[21]; c->mask_rows = ints[22]; c->mask_row_stride = ints[23];
    c->window = ints[24];
    for (i = 0; i < 3; ++i) c->q_stride[i] = ints[25 + i];
    for (i = 0; i < 3; ++i) c->o_stride[i] = ints[28 + i];
    c->mask_head_stride = ints[31]; c->mask_batch_stride = ints[32]; c->mask_type = ints[33];
    c->scale = floats[0]; c->softcap = floats[1]; c->max_bias = floats[2];

}

/* Bytes of host buffer i (kgen_fa_buffers' order) for a call: state only when the host keeps it. */
static VkDeviceSize host_buffer_bytes(int i, const uint64_t *bytes, uint64_t o_bytes, const kgen_fa_plan *plan,
                                      int keep_state) {
    if (i < 5) return (VkDeviceSize)bytes[i];
    if (i == 5) return (VkDeviceSize)o_bytes;
    if (i == 6) return plan->scratch_bytes;
    return keep_state ? plan->state_bytes : 0u;
}

static VkResult host_command_buffer(VkCommandBuffer *cmd) {
    VkCommandBufferAllocateInfo info;
    memset(&info, 0, sizeof info);
    info.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO;
    info.commandPool = host.pool;
    info.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    info.commandBufferCount = 1;
    return vkAllocateCommandBuffers(host.device, &info, cmd);
}

/* Plans the call of ints/floats; `report` gets "variant|problem|splits|scratch_bytes|exact|state_bytes"
 * or the status and its message. */
static int host_plan(const uint32_t *ints, const float *floats, kgen_fa_call *call, kgen_fa_plan *plan,
                     char *report, size_t size) {
    kgen_fa_message why;
    int status;
    host_call_of(ints, floats, call);
    status = kgen_fa_plan_call(host.ctx, call, plan, &why);
    if (status != KGEN_FA_OK)
        snprintf(report, size, "%s: %s", kgen_fa_status_name((kgen_fa_status)status), why.text);
    else
        snprintf(report, size, "%s|%s|%u|%llu|%u|%llu", plan->variant, plan->problem, plan->splits,
                 (unsigned long long)plan->scratch_bytes, plan->exact, (unsigned long long)plan->state_bytes);
    return status;
}

/* One call. ints: head_k, head_v, k_type, v_type, features, acc, v_in_k, n_batch, n_head_q,
 * n_head_kv, n_q, n_kv, k_stride[3], k_offset, v_stride[3], v_offset, mask_batch, mask_heads,
 * mask_rows, mask_row_stride, window, q_stride[3], o_stride[3], mask_head_stride, mask_batch_stride, mask_type; floats: scale, softcap, max_bias. data[i]/bytes[i]: q, k,
 * v, mask, sinks (NULL/0: not bound; v_in_k binds K for V). The call runs `runs` times (O and
 * scratch are filled with NaN bytes before each but the first), then O is copied to `o`.
 * `drop` >= 0 passes that kgen_fa_buffers member (q, k, v, mask, sinks, o, scratch, state) as VK_NULL_HANDLE;
 * 100 + i passes caller buffer i (q .. o) with a range 4 bytes short of plan.buffer_bytes[i].
 * `keep_state`: 1 passes a state buffer, zeroed once before the first run (0: the record zeroes
 * the counters inside scratch); 2 passes it with a range 4 bytes short of plan.state_bytes.
 * `report`: "variant|problem|splits|scratch_bytes|exact|state_bytes". Returns a kgen_fa_status, or 100. */
int kgen_host_run(const uint32_t *ints, const float *floats, const void *const *data, const uint64_t *bytes,
                  float *o, uint64_t o_bytes, int runs, int drop, int keep_state, char *report, size_t size) {
    kgen_fa_call call;
    kgen_fa_plan plan;
    kgen_fa_message why;
    kgen_fa_buffers bufs;
    kgen_fa_buffer *slots = &bufs.q;
    host_buffer hb[HOST_BUFFERS];
    VkCommandBufferBeginInfo begin;
    VkSubmitInfo submit;
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    VkFence fence = VK_NULL_HANDLE;
    VkFenceCreateInfo fence_info;
    int status = 0, run, i;
    VkResult r;

    status = host_plan(ints, floats, &call, &plan, report, size);
    if (status != KGEN_FA_OK) return status;
    memset(hb, 0, sizeof hb);
    memset(&bufs, 0, sizeof bufs);
    for (i = 0; i < HOST_BUFFERS; ++i) {
        VkDeviceSize n = host_buffer_bytes(i, bytes, o_bytes, &plan, keep_state);
        if (n == 0 || (i == 2 && call.v_in_k)) continue;
        r = host_buffer_create(&hb[i], n);
        if (r != VK_SUCCESS) {
            status = fail(report, size, "host buffer", r);
            goto done;
        }
        if (i < 5) memcpy(hb[i].mapped, data[i], (size_t)n);
        if (i == 7) memset(hb[i].mapped, 0, (size_t)n);   /* once: every call leaves it zero */
        slots[i].buffer = hb[i].buffer;
        slots[i].offset = 0;
        slots[i].range = i < 6 ? n : VK_WHOLE_SIZE;   /* the exact sizes: the record checks them */
    }
    if (call.v_in_k) slots[2] = slots[1];
    if (keep_state == 2 && slots[7].buffer != VK_NULL_HANDLE) slots[7].range = plan.state_bytes - 4u;
    if (drop >= 0 && drop < HOST_BUFFERS) slots[drop].buffer = VK_NULL_HANDLE;
    if (drop >= 100 && drop < 106 && plan.buffer_bytes[drop - 100] >= 4u) slots[drop - 100].range = plan.buffer_bytes[drop - 100] - 4u;
    r = host_command_buffer(&cmd);
    if (r != VK_SUCCESS) { status = fail(report, size, "vkAllocateCommandBuffers", r); goto done; }
    memset(&fence_info, 0, sizeof fence_info);
    fence_info.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO;
    r = vkCreateFence(host.device, &fence_info, NULL, &fence);
    if (r != VK_SUCCESS) { status = fail(report, size, "vkCreateFence", r); goto done; }
    for (run = 0; run < runs; ++run) {
        if (run > 0) {
            memset(hb[5].mapped, 0xff, (size_t)hb[5].size);   /* NaN: a run that skips a row shows */
            if (hb[6].mapped != NULL) memset(hb[6].mapped, 0xff, (size_t)hb[6].size);
        }
        memset(&begin, 0, sizeof begin);
        begin.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
        begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
        vkResetCommandBuffer(cmd, 0);
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
        if (r == VK_SUCCESS) r = vkResetFences(host.device, 1, &fence);
        if (r != VK_SUCCESS) { status = fail(report, size, "vkQueueSubmit/vkWaitForFences", r); goto done; }
    }
    memcpy(o, hb[5].mapped, (size_t)o_bytes);
done:
    if (fence != VK_NULL_HANDLE) vkDestroyFence(host.device, fence, NULL);
    if (cmd != VK_NULL_HANDLE) vkFreeCommandBuffers(host.device, host.pool, 1, &cmd);
    for (i = 0; i < HOST_BUFFERS; ++i) host_buffer_destroy(&hb[i]);
    kgen_fa_context_recycle(host.ctx);
    return status;
}

/* `threads` threads plan the same call at once on the shared context (the first plan of an
 * entry creates its pipelines under the context's lock). Returns how many got KGEN_FA_OK with
 * the same pipelines as the first thread's plan. */
typedef struct host_planner {
    const kgen_fa_call *call;
    kgen_fa_plan plan;
    int status;
} host_planner;

static void *host_plan_thread(void *arg) {
    host_planner *p = (host_planner *)arg;
    p->status = kgen_fa_plan_call(host.ctx, p->call, &p->plan, NULL);
    return NULL;
}

int kgen_host_plan_threads(const uint32_t *ints, const float *floats, int threads) {
    kgen_fa_call call;
    host_planner planners[32];
    pthread_t ids[32];
    int i, same = 0;
    host_call_of(ints, floats, &call);
    if (threads > 32) threads = 32;
    for (i = 0; i < threads; ++i) {
        planners[i].call = &call;
        pthread_create(&ids[i], NULL, host_plan_thread, &planners[i]);
    }
    for (i = 0; i < threads; ++i) pthread_join(ids[i], NULL);
    for (i = 0; i < threads; ++i) {
        same += planners[i].status == KGEN_FA_OK &&
                memcmp(planners[i].plan.pipeline, planners[0].plan.pipeline, sizeof planners[0].plan.pipeline) == 0;
    }
    return same;
}

static int compare_doubles(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double host_now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

#define HOST_MAX_SETS 16

/* Times one call the way kgen bench times a plan: buffers in device-local memory (uploaded once
 * through a staging buffer), `sets` copies of every buffer taken in turn so that inputs leave
 * the L2 cache between runs, `warmup` untimed records, then `repeats` records back to back in one
 * command buffer with a timestamp before and after each and a barrier between them.
 * times[0]: median GPU us of one call; times[1]: median CPU us of one kgen_fa_record.
 * Returns a kgen_fa_status, or 100. */
int kgen_host_time(const uint32_t *ints, const float *floats, const void *const *data, const uint64_t *bytes,
                   uint64_t o_bytes, int sets, int warmup, int repeats, int keep_state, double *times,
                   char *report, size_t size) {
    kgen_fa_call call;
    kgen_fa_plan plan;
    kgen_fa_message why;
    kgen_fa_buffers bufs[HOST_MAX_SETS];
    host_buffer hb[HOST_MAX_SETS][HOST_BUFFERS], staging;
    VkCommandBufferBeginInfo begin;
    VkQueryPoolCreateInfo query_info;
    VkQueryPool queries = VK_NULL_HANDLE;
    VkSubmitInfo submit;
    VkCommandBuffer cmd = VK_NULL_HANDLE;
    VkMemoryBarrier barrier;
    uint64_t *ticks = NULL;
    double *gpu = NULL, *cpu = NULL;
    VkDeviceSize offset = 0;
    int status = 0, i, j;
    VkResult r;

    if (repeats < 1 || repeats > 4096) repeats = 100;
    if (sets < 1 || sets > HOST_MAX_SETS) sets = 1;
    if (warmup < 0) warmup = 0;
    status = host_plan(ints, floats, &call, &plan, report, size);
    if (status != KGEN_FA_OK) return status;
    memset(hb, 0, sizeof hb);
    memset(&staging, 0, sizeof staging);
    memset(bufs, 0, sizeof bufs);
    ticks = (uint64_t *)calloc(2u * (size_t)repeats, sizeof *ticks);
    gpu = (double *)calloc((size_t)repeats, sizeof *gpu);
    cpu = (double *)calloc((size_t)repeats, sizeof *cpu);
    for (i = 0; i < 5; ++i) offset += (bytes[i] + 255u) / 256u * 256u;
    r = host_buffer_create(&staging, offset ? offset : 16);
    if (r != VK_SUCCESS) { status = fail(report, size, "staging buffer", r); goto done; }
    for (j = 0; j < sets; ++j) {
        kgen_fa_buffer *slots = &bufs[j].q;
        for (i = 0; i < HOST_BUFFERS; ++i) {
            VkDeviceSize n = host_buffer_bytes(i, bytes, o_bytes, &plan, keep_state);
            if (n == 0 || (i == 2 && call.v_in_k)) continue;
            r = host_buffer_alloc(&hb[j][i], n, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
            if (r != VK_SUCCESS) { status = fail(report, size, "device buffer", r); goto done; }
            slots[i].buffer = hb[j][i].buffer;
            slots[i].range = VK_WHOLE_SIZE;
        }
        if (call.v_in_k) slots[2] = slots[1];
    }
    r = host_command_buffer(&cmd);
    if (r != VK_SUCCESS) { status = fail(report, size, "vkAllocateCommandBuffers", r); goto done; }
    memset(&query_info, 0, sizeof query_info);
    query_info.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO;
    query_info.queryType = VK_QUERY_TYPE_TIMESTAMP;
    query_info.queryCount = 2u * (uint32_t)repeats;
    r = vkCreateQueryPool(host.device, &query_info, NULL, &queries);
    if (r != VK_SUCCESS) { status = fail(report, size, "vkCreateQueryPool", r); goto done; }
    memset(&begin, 0, sizeof begin);
    begin.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
    begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    memset(&barrier, 0, sizeof barrier);
    barrier.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
    barrier.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT | VK_ACCESS_SHADER_WRITE_BIT;
    barrier.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
    vkBeginCommandBuffer(cmd, &begin);
    vkCmdResetQueryPool(cmd, queries, 0, 2u * (uint32_t)repeats);
    offset = 0;
    for (i = 0; i < 5; ++i) {   /* the inputs, once per set */
        VkBufferCopy copy;
        if (bytes[i] == 0 || hb[0][i].buffer == VK_NULL_HANDLE) continue;
        memcpy((char *)staging.mapped + offset, data[i], (size_t)bytes[i]);
        copy.srcOffset = offset;
        copy.dstOffset = 0;
        copy.size = bytes[i];
        for (j = 0; j < sets; ++j) vkCmdCopyBuffer(cmd, staging.buffer, hb[j][i].buffer, 1, &copy);
        offset += (bytes[i] + 255u) / 256u * 256u;
    }
    for (j = 0; j < sets; ++j) {   /* the state, zeroed once */
        if (hb[j][7].buffer != VK_NULL_HANDLE) vkCmdFillBuffer(cmd, hb[j][7].buffer, 0, VK_WHOLE_SIZE, 0u);
    }
    for (i = -warmup; i < repeats; ++i) {
        const kgen_fa_buffers *b = &bufs[(i + warmup) % sets];
        double t0;
        vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                             VK_PIPELINE_STAGE_TRANSFER_BIT | VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &barrier, 0, NULL, 0, NULL);
        if (i >= 0) vkCmdWriteTimestamp(cmd, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, queries, 2u * (uint32_t)i);
        t0 = host_now_us();
        status = kgen_fa_record(host.ctx, &plan, cmd, b, &why);
        if (i >= 0) cpu[i] = host_now_us() - t0;
        if (status != KGEN_FA_OK) {
            vkEndCommandBuffer(cmd);
            snprintf(report, size, "%s: %s", kgen_fa_status_name((kgen_fa_status)status), why.text);
            goto done;
        }
        if (i >= 0) vkCmdWriteTimestamp(cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, queries, 2u * (uint32_t)i + 1u);
    }
    vkEndCommandBuffer(cmd);
    memset(&submit, 0, sizeof submit);
    submit.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO;
    submit.commandBufferCount = 1;
    submit.pCommandBuffers = &cmd;
    r = vkQueueSubmit(host.queue, 1, &submit, VK_NULL_HANDLE);
    if (r == VK_SUCCESS) r = vkQueueWaitIdle(host.queue);
    if (r == VK_SUCCESS)
        r = vkGetQueryPoolResults(host.device, queries, 0, 2u * (uint32_t)repeats, 2u * (size_t)repeats * sizeof *ticks,
                                  ticks, sizeof *ticks, VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT);
    if (r != VK_SUCCESS) { status = fail(report, size, "submit / timestamps", r); goto done; }
    for (i = 0; i < repeats; ++i) gpu[i] = (double)(ticks[2 * i + 1] - ticks[2 * i]) * host.timestamp_period * 1e-3;
    qsort(gpu, (size_t)repeats, sizeof *gpu, compare_doubles);
    qsort(cpu, (size_t)repeats, sizeof *cpu, compare_doubles);
    times[0] = gpu[repeats / 2];
    times[1] = cpu[repeats / 2];
done:
    if (queries != VK_NULL_HANDLE) vkDestroyQueryPool(host.device, queries, NULL);
    if (cmd != VK_NULL_HANDLE) vkFreeCommandBuffers(host.device, host.pool, 1, &cmd);
    for (j = 0; j < sets; ++j) {
        for (i = 0; i < HOST_BUFFERS; ++i) host_buffer_destroy(&hb[j][i]);
    }
    host_buffer_destroy(&staging);
    free(ticks);
    free(gpu);
    free(cpu);
    kgen_fa_context_recycle(host.ctx);
    return status;
}
