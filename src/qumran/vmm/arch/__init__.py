"""x86-64 machine set-up: memory layout, boot parameters, page tables, GDT, registers,
CPUID and MSRs. Pure functions over bytes and ctypes structures; no ioctls here."""
