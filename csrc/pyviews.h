/*
 * Reading the arrays Python hands the compiled parts: C-contiguous buffers of a given
 * item size, the int64 ones checked by their format too, and the texts' buffers with the
 * check that every text lies inside its own. Include after Python.h.
 */

#ifndef DIFFMIX_PYVIEWS_H
#define DIFFMIX_PYVIEWS_H

#include <string.h>

/* A C-contiguous buffer of `itemsize`-byte items; the int64 arrays also by their format
 * (a float64 or uint64 array has 8-byte items too, and its bits would be read as int64). */
static int get_view(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *format = view->format ? view->format : "B";
    if (*format == '<' || *format == '=' || *format == '@')
        format++;
    int int64 = strcmp(format, "q") == 0 || (strcmp(format, "l") == 0 && sizeof(long) == 8);
    if (view->itemsize != itemsize || (itemsize == 8 && !int64)) {
        PyErr_Format(PyExc_TypeError, "%s: %s expected, got items of format '%s'", what, itemsize == 8 ? "int64" : "bytes", view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* The buffers of a sequence of bytes-like objects (the texts' buffers), held until released. */
typedef struct {
    PyObject *tuple; /* our own: exporting a buffer may run Python code that changes a list */
    Py_buffer *views;
    Py_ssize_t count, got;
} text_buffers_t;

static int text_buffers_get(PyObject *sequence, text_buffers_t *buffers)
{
    memset(buffers, 0, sizeof(*buffers));
    buffers->tuple = PySequence_Tuple(sequence);
    if (!buffers->tuple)
        return -1;
    buffers->count = PyTuple_GET_SIZE(buffers->tuple);
    buffers->views = PyMem_Calloc((size_t)(buffers->count ? buffers->count : 1), sizeof(Py_buffer));
    if (!buffers->views) {
        PyErr_NoMemory();
        return -1;
    }
    for (; buffers->got < buffers->count; buffers->got++)
        if (get_view(PyTuple_GET_ITEM(buffers->tuple, buffers->got), &buffers->views[buffers->got], 0, 1, "buffers") < 0)
            return -1;
    return 0;
}

/* Releases what text_buffers_get got, also after it failed part way. */
static void text_buffers_release(text_buffers_t *buffers)
{
    for (Py_ssize_t k = 0; k < buffers->got; k++)
        PyBuffer_Release(&buffers->views[k]);
    PyMem_Free(buffers->views);
    Py_XDECREF(buffers->tuple);
}

/* The first k of count for which text k, views[ids[k]][starts[k]:][:lengths[k]], does not lie
 * inside its buffer; -1 when all do. Check copies of the arrays, which nothing else can change. */
static Py_ssize_t first_text_outside(const text_buffers_t *buffers, const int64_t *ids, const int64_t *starts, const int64_t *lengths, Py_ssize_t count)
{
    for (Py_ssize_t k = 0; k < count; k++)
        /* in this order, nothing overflows: 0 <= start <= size, then length <= size - start */
        if (ids[k] < 0 || ids[k] >= buffers->count || starts[k] < 0 || lengths[k] < 0 || starts[k] > buffers->views[ids[k]].len ||
            lengths[k] > buffers->views[ids[k]].len - starts[k])
            return k;
    return -1;
}

#endif
