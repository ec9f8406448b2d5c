/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * patchbay.h - macros for Patchbay live patch sources.
 *
 * A patch source defines replacement functions and marks each one:
 *
 *   static int pb_cmdline_proc_show(struct seq_file *m, void *v) { ... }
 *   PATCHBAY_REPLACE(vmlinux, cmdline_proc_show, pb_cmdline_proc_show);
 *
 * The first argument names the object that holds the old function: `vmlinux`
 * or a loadable module's name (with '_' for '-'). When several local functions
 * share the old name, PATCHBAY_REPLACE_SYMPOS picks one by its 1-based
 * position in the kernel's symbol table.
 *
 * patchbay-build reads these markers, generates the klp_patch tables
 * (cumulative: .replace = true) and turns references to symbols the kernel
 * does not export into livepatch relocations.
 */
#ifndef PATCHBAY_H
#define PATCHBAY_H

#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/livepatch.h>

/*
 * The marker is a global pointer with a name the builder can find in the
 * linked module; the generated init code reads it to fill klp_func.new_func.
 * Referencing new_function also keeps a static replacement from being
 * discarded as unused.
 */
#define PATCHBAY_REPLACE_SYMPOS(object, old_function, new_function, sympos)  \
	extern void *const                                                    \
		__patchbay_replace__##object##__##old_function##__##sympos;   \
	void *const __patchbay_replace__##object##__##old_function##__##sympos \
		= (void *)&(new_function)

#define PATCHBAY_REPLACE(object, old_function, new_function) \
	PATCHBAY_REPLACE_SYMPOS(object, old_function, new_function, 0)

/*
 * Callbacks (Documentation/livepatch/callbacks.rst) of the patch's part for
 * `object`, which must also have a PATCHBAY_REPLACE:
 *
 *   static int pb_setup(struct klp_object *obj) { ... return 0; }
 *   PATCHBAY_PRE_PATCH(vmlinux, pb_setup);
 *
 * pre_patch returns 0 or a negative errno (which stops the patch); the others
 * return nothing. Shadow variables (klp_shadow_get_or_alloc and friends from
 * <linux/livepatch.h>) are typically freed in a post_unpatch callback.
 */
#define PATCHBAY_CALLBACK_(object, field, type, function)                   \
	extern __typeof__(type) const __patchbay_callback__##object##__##field; \
	__typeof__(type) const __patchbay_callback__##object##__##field = (function)

#define PATCHBAY_PRE_PATCH(object, function) \
	PATCHBAY_CALLBACK_(object, pre_patch, int (*)(struct klp_object *), function)
#define PATCHBAY_POST_PATCH(object, function) \
	PATCHBAY_CALLBACK_(object, post_patch, void (*)(struct klp_object *), function)
#define PATCHBAY_PRE_UNPATCH(object, function) \
	PATCHBAY_CALLBACK_(object, pre_unpatch, void (*)(struct klp_object *), function)
#define PATCHBAY_POST_UNPATCH(object, function) \
	PATCHBAY_CALLBACK_(object, post_unpatch, void (*)(struct klp_object *), function)

#endif /* PATCHBAY_H */
