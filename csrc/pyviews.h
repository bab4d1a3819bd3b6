/*
 * Reading the arrays Python hands the compiled parts: C-contiguous buffers of a given
 * item size, the int64 ones checked by their format too. Include after Python.h.
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

#endif
