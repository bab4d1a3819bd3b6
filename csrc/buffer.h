/*
 * A growable byte buffer for the compiled parts' outputs. It uses the C library's
 * allocator, not PyMem_*, because the diff fills one with the GIL released.
 */

#ifndef DIFFMIX_BUFFER_H
#define DIFFMIX_BUFFER_H

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *data;
    size_t size, capacity;
} buffer_t;

/* Append size bytes; -1 when memory runs out (the buffer is left as it was). */
static int buffer_put(buffer_t *out, const char *data, size_t size)
{
    if (size == 0)
        return 0; /* nothing to copy, perhaps into no buffer yet */
    if (out->size + size > out->capacity) {
        size_t capacity = out->capacity ? out->capacity : 4096;
        while (capacity < out->size + size)
            capacity *= 2;
        char *grown = realloc(out->data, capacity);
        if (!grown)
            return -1;
        out->data = grown;
        out->capacity = capacity;
    }
    memcpy(out->data + out->size, data, size);
    out->size += size;
    return 0;
}

#endif
