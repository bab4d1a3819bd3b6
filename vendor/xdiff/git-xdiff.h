/*
 * diffmix's replacement for libgit2's deps/xdiff/git-xdiff.h: the indirection
 * between xdiff and its host. libgit2's version maps allocation onto git__malloc
 * and the regex types onto its own; here they map onto the C library, and the
 * -I<regex> option, which diffmix never sets, is refused as in libgit2.
 */

#ifndef INCLUDE_git_xdiff_h__
#define INCLUDE_git_xdiff_h__

#include <ctype.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define XDL_UNUSED __attribute__((unused))

#define xdl_malloc(x) malloc(x)
#define xdl_calloc(n, sz) calloc(n, sz)
#define xdl_free(ptr) free(ptr)
#define xdl_realloc(ptr, x) realloc(ptr, x)

/* As libgit2 (GIT_ASSERT): an internal inconsistency fails the diff instead of aborting the process. */
#define XDL_BUG(msg) return -1

typedef struct { int unused; } xdl_regex_t;
typedef struct { long rm_so, rm_eo; } xdl_regmatch_t;

static inline int xdl_regexec_buf(
	const xdl_regex_t *preg, const char *buf, size_t size,
	size_t nmatch, xdl_regmatch_t pmatch[], int eflags)
{
	(void)preg; (void)buf; (void)size; (void)nmatch; (void)pmatch; (void)eflags;
	return -1;
}

#endif
