// The table of emulated kernels. build.rs generates, per kernel file, a function that appends
// that file's `extern "C" __global__` entry points (found by scanning the source), and one
// function calling them all; runtime.cpp looks kernels up by name.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace kdc_emu {

struct KernelEntry {
    const char* name;
    void* fn;
    void (*invoke)(void* fn, void** args);
    size_t nargs;
    std::vector<size_t> sizes;
};

template <class... A, size_t... I>
void invoke_with(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <class... A>
KernelEntry make_entry(const char* name, void (*f)(A...)) {
    KernelEntry e;
    e.name = name;
    e.fn = reinterpret_cast<void*>(f);
    e.invoke = [](void* fp, void** args) {
        invoke_with(reinterpret_cast<void (*)(A...)>(fp), args, std::index_sequence_for<A...>{});
    };
    e.nargs = sizeof...(A);
    e.sizes = {sizeof(A)...};
    return e;
}

}  // namespace kdc_emu

// Defined in the generated registry source.
const std::vector<kdc_emu::KernelEntry>& kdc_emu_registry();
