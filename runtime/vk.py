"""The thin layer over the `vulkan` cffi binding: typed errors, the instance, pNext chains.

Input structs are built with `ffi.new` and passed to the binding's raw `lib` functions: the
binding's struct constructors do not keep nested Python strings alive. cffi frees memory with its
last Python reference, so keep every cdata object in a local variable until the Vulkan call that
reads it has returned. The binding's wrappers are fine for calls that only return data; `call()`
turns their exceptions into VulkanError.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import cffi
import vulkan

from kgen.errors import KgenError

ffi = vulkan.ffi
lib = vulkan.lib

API_VERSION = vulkan.VK_MAKE_VERSION(1, 3, 0)  # VK_API_VERSION_1_3; the binding defines only 1.0
PORTABILITY_ENUMERATION = "VK_KHR_portability_enumeration"

# Structs newer than the binding (1.3.275), written from the Vulkan registry. `sType` is declared
# uint32_t: VkStructureType is a 32-bit enum, and every value used here is positive.
ext_ffi = cffi.FFI()
ext_ffi.cdef("""
typedef struct { uint32_t sType; void* pNext; uint32_t f[7]; } Coopmat2Features;
typedef struct {
    uint32_t sType; void* pNext;
    uint32_t workgroupScopeMaxWorkgroupSize;
    uint32_t flexibleDimensionsMaxDimension;
    uint32_t workgroupScopeReservedSharedMemory;
} Coopmat2Properties;
typedef struct {
    uint32_t sType; void* pNext;
    uint32_t shaderBFloat16Type;
    uint32_t shaderBFloat16DotProduct;
    uint32_t shaderBFloat16CooperativeMatrix;
} Bfloat16Features;
""")
# VkPhysicalDeviceCooperativeMatrix2FeaturesNV / ...PropertiesNV (VK_NV_cooperative_matrix2).
# 1000593001 is VkCooperativeMatrixFlexibleDimensionsPropertiesNV, not the device properties.
STYPE_COOPMAT2_FEATURES = 1000593000
STYPE_COOPMAT2_PROPERTIES = 1000593002
STYPE_BFLOAT16_FEATURES = 1000141000  # VkPhysicalDeviceShaderBfloat16FeaturesKHR


def _constant_name(exc_class: type) -> str:
    """VkErrorOutOfHostMemory -> VK_ERROR_OUT_OF_HOST_MEMORY: the binding names both alike."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", exc_class.__name__).upper()


def _result_values() -> dict[str, int]:
    """VkResult name -> value, for every result the binding has an exception class for.

    The binding gives the error codes promoted to core (VK_ERROR_OUT_OF_POOL_MEMORY and others)
    a positive value; every VK_ERROR_* code is negative, so the sign is restored here, except for
    VK_ERROR_INCOMPATIBLE_SHADER_BINARY_EXT: the legacy name of a success code.
    """
    values = {"VK_SUCCESS": 0}
    for exc_class in vulkan.exception_codes.values():
        name = _constant_name(exc_class)
        value = getattr(vulkan, name, None)
        if isinstance(value, int):  # aliases are None in the binding
            is_error = name.startswith("VK_ERROR_") and name != "VK_ERROR_INCOMPATIBLE_SHADER_BINARY_EXT"
            values[name] = -abs(value) if is_error else value
    return values


RESULT_VALUES = _result_values()
RESULT_NAMES = {value: name for name, value in reversed(RESULT_VALUES.items())}  # first name wins
_HINTS = {
    # The loader also answers this when no driver loaded at all (a missing libGLdispatch, say).
    "VK_ERROR_INCOMPATIBLE_DRIVER": "no usable Vulkan 1.3 driver; VK_LOADER_DEBUG=error,warn,driver "
                                    "shows why. Without a GPU, scripts/bootstrap.sh installs Mesa lavapipe",
    "VK_ERROR_INITIALIZATION_FAILED": "the driver could not start; from vkCreateInstance this means "
                                      "the loader found no usable driver (check VK_DRIVER_FILES)",
    "VK_ERROR_EXTENSION_NOT_PRESENT": "the device does not list this extension: check Caps.extensions "
                                      "before using it",
    "VK_ERROR_OUT_OF_DEVICE_MEMORY": "the buffers do not fit in device memory: use smaller shapes",
    "VK_ERROR_DEVICE_LOST": "the GPU reset, often after a shader ran too long or out of bounds",
}


def result_name(result: int) -> str:
    return RESULT_NAMES.get(result, f"VkResult({result})")


class VulkanError(KgenError):
    """A Vulkan call returned an error code. `call` is the Vulkan function, `result` the VkResult."""

    def __init__(self, call: str, result: int):
        self.call, self.result = call, result
        hint = _HINTS.get(result_name(result))
        super().__init__(f"{call} returned {result_name(result)} ({result})"
                         + (f": {hint}" if hint else ""))


def check(call: str, result: int) -> int:
    """Raise VulkanError for an error code from a raw `lib` call; return success codes
    (VK_INCOMPLETE included) to the caller."""
    if result < 0:
        raise VulkanError(call, result)
    return result


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a binding wrapper (`vulkan.vkXxx`), turning its exceptions into VulkanError."""
    try:
        return fn(*args)
    except (vulkan.VkError, vulkan.VkException) as exc:
        result = RESULT_VALUES.get(_constant_name(type(exc)), vulkan.VK_ERROR_UNKNOWN)
        raise VulkanError(fn.__name__, result) from exc
    except KeyError as exc:
        # The binding raises KeyError(result) for a code missing from its table, which is
        # the case for every core-promoted error code (their sign is wrong there).
        if exc.args and isinstance(exc.args[0], int):
            raise VulkanError(fn.__name__, exc.args[0]) from exc
        raise


def instance_extensions() -> set[str]:
    return {e.extensionName for e in call(vulkan.vkEnumerateInstanceExtensionProperties, None)}


VALIDATION_LAYER = "VK_LAYER_KHRONOS_validation"
DEBUG_UTILS = "VK_EXT_debug_utils"
# Messages of severity error from the validation layer, drained by validation_errors().
_validation_errors: list[str] = []
_messengers: dict[int, Any] = {}


@ffi.callback("VkBool32(VkDebugUtilsMessageSeverityFlagBitsEXT, VkDebugUtilsMessageTypeFlagsEXT, "
              "const VkDebugUtilsMessengerCallbackDataEXT*, void*)")
def _on_validation_message(severity, types, data, user):
    if severity & vulkan.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT:
        _validation_errors.append(ffi.string(data.pMessage).decode(errors="replace"))
    return vulkan.VK_FALSE


def validation_errors() -> list[str]:
    """Errors the validation layer reported since the last call (KGEN_VALIDATION=1 only)."""
    errors = list(_validation_errors)
    _validation_errors.clear()
    return errors


def _layers() -> list[str]:
    count = ffi.new("uint32_t*")
    check("vkEnumerateInstanceLayerProperties", lib.vkEnumerateInstanceLayerProperties(count, ffi.NULL))
    props = ffi.new("VkLayerProperties[]", count[0])
    check("vkEnumerateInstanceLayerProperties", lib.vkEnumerateInstanceLayerProperties(count, props))
    return [ffi.string(p.layerName).decode() for p in props]


def create_instance(app_name: str = "kgen") -> Any:
    """A VkInstance for Vulkan 1.3. Portability enumeration is enabled when the loader lists it,
    so that drivers layered over Metal or similar also show up. With KGEN_VALIDATION=1 the
    Khronos validation layer is on and its errors are collected (validation_errors())."""
    from kgen import knobs
    validate = knobs.get("KGEN_VALIDATION")
    extensions = [PORTABILITY_ENUMERATION] if PORTABILITY_ENUMERATION in instance_extensions() else []
    layers = []
    if validate:
        if VALIDATION_LAYER not in _layers():
            raise VulkanError("KGEN_VALIDATION=1: the Khronos validation layer is not installed "
                              "(Debian: vulkan-validationlayers)", vulkan.VK_ERROR_LAYER_NOT_PRESENT)
        layers, extensions = [VALIDATION_LAYER], extensions + [DEBUG_UTILS]
    name = ffi.new("char[]", app_name.encode())
    ext_names = [ffi.new("char[]", e.encode()) for e in extensions]
    ext_array = ffi.new("const char*[]", ext_names) if ext_names else ffi.NULL
    layer_names = [ffi.new("char[]", n.encode()) for n in layers]
    layer_array = ffi.new("const char*[]", layer_names) if layer_names else ffi.NULL
    app = ffi.new("VkApplicationInfo*", {
        "sType": vulkan.VK_STRUCTURE_TYPE_APPLICATION_INFO, "pApplicationName": name,
        "pEngineName": name, "apiVersion": API_VERSION})
    info = ffi.new("VkInstanceCreateInfo*", {
        "sType": vulkan.VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, "pApplicationInfo": app,
        "flags": vulkan.VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR if extensions else 0,
        "enabledExtensionCount": len(ext_names), "ppEnabledExtensionNames": ext_array,
        "enabledLayerCount": len(layer_names), "ppEnabledLayerNames": layer_array})
    out = ffi.new("VkInstance*")
    check("vkCreateInstance", lib.vkCreateInstance(info, ffi.NULL, out))
    if validate:
        _messengers[int(ffi.cast("uintptr_t", out[0]))] = _create_messenger(out[0])
    return out[0]


def _create_messenger(instance: Any) -> Any:
    create = instance_proc(instance, "vkCreateDebugUtilsMessengerEXT")
    info = ffi.new("VkDebugUtilsMessengerCreateInfoEXT*", {
        "sType": vulkan.VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
        "messageSeverity": vulkan.VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT
        | vulkan.VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT,
        "messageType": vulkan.VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT
        | vulkan.VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT,
        "pfnUserCallback": _on_validation_message})
    out = ffi.new("VkDebugUtilsMessengerEXT*")
    check("vkCreateDebugUtilsMessengerEXT", create(instance, info, ffi.NULL, out))
    return out[0]


def destroy_instance(instance: Any) -> None:
    messenger = _messengers.pop(int(ffi.cast("uintptr_t", instance)), None)
    if messenger is not None:
        instance_proc(instance, "vkDestroyDebugUtilsMessengerEXT")(instance, messenger, ffi.NULL)
    lib.vkDestroyInstance(instance, ffi.NULL)


@contextlib.contextmanager
def open_instance() -> Iterator[Any]:
    """create_instance() that is destroyed on exit, so that no loader state outlives its use."""
    instance = create_instance()
    try:
        yield instance
    finally:
        destroy_instance(instance)


def instance_proc(instance: Any, name: str) -> Any:
    """The raw function pointer `name`, typed as the binding's PFN_<name>.

    The caller must first check that the device lists the extension: the loader hands out a
    trampoline for any extension some driver knows, and calling it for a device that lacks the
    extension crashes the process.
    """
    fn = lib.vkGetInstanceProcAddr(instance, name.encode())
    if fn == ffi.NULL:
        raise VulkanError(f"vkGetInstanceProcAddr({name})", vulkan.VK_ERROR_EXTENSION_NOT_PRESENT)
    return ffi.cast(f"PFN_{name}", fn)


def device_proc(device: Any, name: str) -> Any:
    """The raw device-level function pointer `name`, typed as the binding's PFN_<name>. As for
    instance_proc, the caller first checks that the device's extension was enabled."""
    fn = lib.vkGetDeviceProcAddr(device, name.encode())
    if fn == ffi.NULL:
        raise VulkanError(f"vkGetDeviceProcAddr({name})", vulkan.VK_ERROR_EXTENSION_NOT_PRESENT)
    return ffi.cast(f"PFN_{name}", fn)


def new_struct(struct_ffi: cffi.FFI, ctype: str, stype: int) -> Any:
    """A zeroed `ctype*` with its sType set, ready to be linked into a pNext chain."""
    return struct_ffi.new(f"{ctype}*", {"sType": stype})


def link_chain(nodes: list[tuple[cffi.FFI, Any]]) -> None:
    """Point each node's pNext at the next node. Each node is (its ffi, its `T*` cdata).

    Nodes may come from different FFI instances (the binding's and `ext_ffi`), so addresses go
    through uintptr_t. The caller keeps the nodes alive while the chain is in use.
    """
    for (prev_ffi, prev), (node_ffi, node) in zip(nodes, nodes[1:]):
        prev.pNext = prev_ffi.cast("void*", int(node_ffi.cast("uintptr_t", node)))
