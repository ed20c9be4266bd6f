"""kgen.runtime: the only code that talks to Vulkan."""
