/*
 * diffmix._strict_apply: the fast path of diffmix.pipelines.apply.apply_strict, which
 * the build's round trip runs on every document (a Python version of it was 15 % of
 * a filters-off build).
 *
 * apply(before, diff) -> str or None. It applies well-formed hunks exactly where their
 * headers say (lines end at "\n" only) and gives the new text; it answers None for
 * anything the reference path (apply_strict_by_lines, which also classifies errors)
 * must judge: a header it does not read as "@@ -a[,b] +c[,d] @@[ section]" with ASCII
 * digits, text before the first header, an empty or no-newline-marker line, counts
 * that disagree with the header, a hunk out of place or whose old side is not the
 * file's text there, a diff not ending with "\n", a str with lone surrogates.
 * Where it answers a str, the reference path gives the same str (a property test
 * checks this on generated diffs, valid and damaged).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "buffer.h"
#include "strict_apply.h"

typedef struct {
    const char *data;
    Py_ssize_t size;
    PyObject *owner; /* a temporary UTF-8 bytes, or NULL when data is the str's own ASCII buffer */
} text_t;

static int utf8_of(PyObject *obj, text_t *text)
{
    text->owner = NULL;
    if (!PyUnicode_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "apply() takes two str");
        return -1;
    }
    if (PyUnicode_IS_ASCII(obj)) {
        text->data = (const char *)PyUnicode_DATA(obj);
        text->size = PyUnicode_GET_LENGTH(obj);
        return 0;
    }
    text->owner = PyUnicode_AsUTF8String(obj);
    if (!text->owner) { /* lone surrogates: the reference path's business */
        PyErr_Clear();
        return 1;
    }
    text->data = PyBytes_AS_STRING(text->owner);
    text->size = PyBytes_GET_SIZE(text->owner);
    return 0;
}

PyDoc_STRVAR(apply_doc,
"apply(before, diff) -> str or None\n\n"
"apply_strict's fast path: the new text, or None where apply_strict_by_lines must decide.");

static PyObject *apply(PyObject *self, PyObject *args)
{
    PyObject *before_obj, *diff_obj;
    (void)self;
    if (!PyArg_ParseTuple(args, "UU:apply", &before_obj, &diff_obj))
        return NULL;
    text_t before, diff;
    int status = utf8_of(before_obj, &before);
    if (status != 0)
        return status < 0 ? NULL : Py_NewRef(Py_None);
    status = utf8_of(diff_obj, &diff);
    if (status != 0) {
        Py_XDECREF(before.owner);
        return status < 0 ? NULL : Py_NewRef(Py_None);
    }
    buffer_t out = {NULL, 0, 0};
    status = apply_bytes(before.data, before.size, diff.data, diff.size, &out);
    PyObject *result;
    if (status == FAILED)
        result = PyErr_NoMemory();
    else if (status == NOT_FAST)
        result = Py_NewRef(Py_None);
    else
        result = PyUnicode_DecodeUTF8(out.data ? out.data : "", (Py_ssize_t)out.size, "strict");
    free(out.data);
    Py_XDECREF(before.owner);
    Py_XDECREF(diff.owner);
    return result;
}

static PyMethodDef methods[] = {
    {"apply", apply, METH_VARARGS, apply_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "diffmix._strict_apply", "The strict apply's fast path (see diffmix.pipelines.apply).", -1, methods,
};

PyMODINIT_FUNC PyInit__strict_apply(void)
{
    return PyModule_Create(&module);
}
