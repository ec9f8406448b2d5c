/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * patchbay-diff.h - what a diff alone cannot say, for `patchbay-build diff`.
 *
 * Include it from the kernel .c file the fix changes (patchbay-build puts it on
 * the include path of both the original and the patched compile):
 *
 *   #include <patchbay-diff.h>
 *
 *   static int pb_setup(struct klp_object *obj) { ... return 0; }
 *   PATCHBAY_DIFF_PRE_PATCH(pb_setup);
 *
 * Callbacks (Documentation/livepatch/callbacks.rst) attach to the object the
 * file is built into (vmlinux or its module). pre_patch returns 0 or a negative
 * errno, which stops the patch; the others return nothing.
 *
 * Shadow variables: use klp_shadow_get_or_alloc() and friends from
 * <linux/livepatch.h> directly in the fixed code, and free them with
 * klp_shadow_free_all() in a PATCHBAY_DIFF_POST_UNPATCH callback.
 *
 * PATCHBAY_DIFF_IGNORE_FUNCTION(fn) leaves a function out of the patch even
 * though its object code changed (for example when only a line number it
 * passes to a debug helper moved).
 */
#ifndef PATCHBAY_DIFF_H
#define PATCHBAY_DIFF_H

#include <linux/compiler.h>
#include <linux/livepatch.h>

#define PATCHBAY_DIFF_CALLBACK_(field, type, fn)                              \
	static __typeof__(type) const __patchbay_diff_##field##_##fn            \
		__used __section(".patchbay.callbacks." #field) = (fn)

#define PATCHBAY_DIFF_PRE_PATCH(fn) \
	PATCHBAY_DIFF_CALLBACK_(pre_patch, int (*)(struct klp_object *), fn)
#define PATCHBAY_DIFF_POST_PATCH(fn) \
	PATCHBAY_DIFF_CALLBACK_(post_patch, void (*)(struct klp_object *), fn)
#define PATCHBAY_DIFF_PRE_UNPATCH(fn) \
	PATCHBAY_DIFF_CALLBACK_(pre_unpatch, void (*)(struct klp_object *), fn)
#define PATCHBAY_DIFF_POST_UNPATCH(fn) \
	PATCHBAY_DIFF_CALLBACK_(post_unpatch, void (*)(struct klp_object *), fn)

#define PATCHBAY_DIFF_IGNORE_FUNCTION(fn)                                     \
	static void *const __patchbay_diff_ignore_##fn                          \
		__used __section(".patchbay.ignore.functions") = (void *)(fn)

#endif /* PATCHBAY_DIFF_H */
