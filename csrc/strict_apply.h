/*
 * The strict apply's fast path on UTF-8 bytes (see diffmix._strict_apply for its rules),
 * shared by diffmix._strict_apply and the build's fused diff -> document -> round trip
 * (diffmix._xdiff.openelm_documents). Include after Python.h and buffer.h.
 */

#ifndef DIFFMIX_STRICT_APPLY_H
#define DIFFMIX_STRICT_APPLY_H

#include <string.h>

/* An unsigned ASCII decimal at *p (at least one digit, no overflow past 2^40). */
static int read_number(const char **p, const char *end, long long *value)
{
    const char *s = *p;
    long long v = 0;
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    while (s < end && *s >= '0' && *s <= '9') {
        v = v * 10 + (*s - '0');
        if (v > (1LL << 40))
            return -1;
        s++;
    }
    *p = s;
    *value = v;
    return 0;
}

/* "a[,b]" at *p: a number, then an optional ",count" (1 when absent). */
static int read_range(const char **p, const char *end, long long *start, long long *count)
{
    *count = 1;
    if (read_number(p, end, start) < 0)
        return -1;
    if (*p < end && **p == ',') {
        (*p)++;
        return read_number(p, end, count);
    }
    return 0;
}

/* "@@ -a[,b] +c[,d] @@" then end of line or " " + anything; p..end is the line without "\n". */
static int read_header(const char *p, const char *end, long long numbers[4])
{
    if (end - p < 4 || memcmp(p, "@@ -", 4) != 0)
        return -1;
    p += 4;
    if (read_range(&p, end, &numbers[0], &numbers[1]) < 0)
        return -1;
    if (end - p < 2 || memcmp(p, " +", 2) != 0)
        return -1;
    p += 2;
    if (read_range(&p, end, &numbers[2], &numbers[3]) < 0)
        return -1;
    if (end - p < 3 || memcmp(p, " @@", 3) != 0)
        return -1;
    p += 3;
    return (p == end || *p == ' ') ? 0 : -1;
}

/* Where line `line` (0-based) of the file starts, walking forward from a known line start. */
typedef struct {
    const char *data;
    Py_ssize_t size, line, offset;
} cursor_t;

static Py_ssize_t offset_of(cursor_t *c, long long line)
{
    while (c->line < line && c->offset < c->size) {
        const char *nl = memchr(c->data + c->offset, '\n', (size_t)(c->size - c->offset));
        c->offset = nl ? (nl - c->data) + 1 : c->size;
        c->line++;
    }
    return c->line == line ? c->offset : -1; /* -1: the file has fewer lines */
}

enum { APPLIED = 0, NOT_FAST = 1, FAILED = -1 };

/* The whole fast path on UTF-8 bytes; APPLIED fills out. */
static int apply_bytes(const char *before_data, Py_ssize_t before_size, const char *diff_data, Py_ssize_t diff_size, buffer_t *out)
{
    const char *p = diff_data, *end = diff_data + diff_size;
    if (diff_size == 0 || end[-1] != '\n')
        return NOT_FAST;
    cursor_t file = {before_data, before_size, 0, 0};
    long long cursor = 0, drift = 0; /* next unconsumed old line; new_start - old_start drift */
    Py_ssize_t copied_to = 0;        /* byte offset in before up to which out holds the file */
    int hunks = 0;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        long long n[4];
        if (read_header(p, eol, n) < 0)
            return NOT_FAST; /* also text before the first header */
        hunks++;
        long long a = n[0], b = n[1], c = n[2], d = n[3];
        long long start = b == 0 ? a : a - 1, stop = start + b;
        if (start < cursor || c != start + drift + (d == 0 ? 0 : 1))
            return NOT_FAST;
        Py_ssize_t start_at = offset_of(&file, start);
        if (start_at < 0)
            return NOT_FAST;
        if (buffer_put(out, before_data + copied_to, (size_t)(start_at - copied_to)) < 0)
            return FAILED;
        /* The hunk's lines: its old side must be the file's text from start_at on, line by line. */
        Py_ssize_t at = start_at;
        long long old_lines = 0, new_lines = 0;
        p = eol + 1;
        while (p < end && *p != '@') {
            eol = memchr(p, '\n', (size_t)(end - p));
            Py_ssize_t length = eol - p; /* the line's text is p+1 .. eol, its "\n" included */
            char op = *p;
            if (op == ' ' || op == '-') {
                if (at + length > before_size || memcmp(before_data + at, p + 1, (size_t)length) != 0)
                    return NOT_FAST; /* includes a last file line without "\n" */
                at += length;
                old_lines++;
            } else if (op != '+') {
                return NOT_FAST; /* an empty line, the no-newline marker, anything else */
            }
            if (op == ' ' || op == '+') {
                if (buffer_put(out, p + 1, (size_t)length) < 0)
                    return FAILED;
                new_lines++;
            }
            p = eol + 1;
        }
        if (old_lines != b || new_lines != d)
            return NOT_FAST;
        if (offset_of(&file, stop) != at) /* the old side ended inside a line: cannot be, but cheap */
            return NOT_FAST;
        copied_to = at;
        cursor = stop;
        drift += d - b;
    }
    if (!hunks)
        return NOT_FAST;
    if (buffer_put(out, before_data + copied_to, (size_t)(before_size - copied_to)) < 0)
        return FAILED;
    return APPLIED;
}


#endif
