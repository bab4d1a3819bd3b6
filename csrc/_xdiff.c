/*
 * diffmix._xdiff: git's xdiff (vendor/xdiff, as libgit2 1.9.0 ships it), called the
 * way libgit2's git_patch_from_buffers calls it, printing what git_patch_to_buf
 * prints after the file header: hunks only.
 *
 * Why not pygit2: libgit2 computes the git blob id of both buffers of every pair
 * with collision-detecting SHA-1 before diffing (over half the time of a diff on
 * real commits), and pygit2 has no way around it. The diff itself is the same code
 * with the same options; tests/pipelines/test_diff.py checks the two agree byte for
 * byte on crafted pairs and on real commits.
 *
 * What is copied from libgit2 (src/libgit2/diff_xdiff.c, diff_driver.c, diff_file.c,
 * util/utf8.c), each in one place below:
 *   - binary: a NUL byte in the first 8000 bytes of either side, or a side over 512 MiB
 *     (diff_file_content_binary_by_size with the default max_size);
 *   - identical sides give no hunks;
 *   - options: 3 context lines (by default), no inter-hunk context, the indent
 *     heuristic, section headings from the "auto" driver (the line, right-trimmed,
 *     whose first byte is an ASCII letter, '_' or '$'; at most 80 bytes);
 *   - the hunk header is cut to 127 bytes, then at its first invalid UTF-8 byte,
 *     and given back its newline when cut;
 *   - lines print as origin + content, "\ No newline at end of file" as xdiff gives it.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "xinclude.h"

#include "buffer.h"

#define BINARY_CHECK_BYTES 8000           /* GIT_FILTER_BYTES_TO_CHECK_NUL */
#define MAX_DIFF_BYTES ((Py_ssize_t)0x20000000) /* DIFF_MAX_FILESIZE: libgit2's default max_size */
#define HUNK_HEADER_SIZE 128              /* GIT_DIFF_HUNK_HEADER_SIZE */

typedef struct {
    buffer_t text;
    long hunks, added, deleted;
    int failed;
} output_t;

static int output_put(output_t *out, const char *data, size_t size)
{
    if (buffer_put(&out->text, data, size) < 0) {
        out->failed = 1;
        return -1;
    }
    return 0;
}

static int is_ascii_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r' || c == '\v';
}

/* libgit2's diff_context_find with diff_context_line__simple (the "auto" driver). */
static long find_section_heading(const char *line, long line_len, char *out, long out_size, void *payload)
{
    (void)payload;
    while (line_len > 0 && is_ascii_space((unsigned char)line[line_len - 1]))
        line_len--;
    if (line_len == 0)
        return -1;
    unsigned char first = (unsigned char)line[0];
    if (!((first >= 'A' && first <= 'Z') || (first >= 'a' && first <= 'z') || first == '_' || first == '$'))
        return -1;
    if (out_size > line_len)
        out_size = line_len;
    memcpy(out, line, (size_t)out_size);
    return out_size;
}

/* libgit2's git_utf8_valid_buf_length: the length of the longest valid UTF-8 prefix. */
static size_t valid_utf8_length(const unsigned char *text, size_t size)
{
    size_t offset = 0;
    while (offset < size) {
        unsigned char lead = text[offset];
        size_t length = lead < 0x80 ? 1 : lead < 0xC0 ? 0 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : lead < 0xF8 ? 4 : 0;
        if (length == 0 || length > size - offset)
            break;
        for (size_t i = 1; i < length; i++)
            if ((text[offset + i] & 0xC0) != 0x80)
                return offset;
        offset += length;
    }
    return offset;
}

static int emit_line(void *priv, mmbuffer_t *bufs, int count)
{
    output_t *out = priv;
    if (count == 1) {  /* a hunk header, as libgit2's git_xdiff_cb keeps it */
        char header[HUNK_HEADER_SIZE];
        size_t size = (size_t)bufs[0].size;
        if (size >= sizeof(header))
            size = sizeof(header) - 1;
        memcpy(header, bufs[0].ptr, size);
        size_t valid = valid_utf8_length((const unsigned char *)header, size);
        if (valid < size) {
            header[valid] = '\n';
            size = valid + 1;
        }
        out->hunks++;
        return output_put(out, header, size);
    }
    if (bufs[0].ptr[0] == '+')
        out->added++;
    else if (bufs[0].ptr[0] == '-')
        out->deleted++;
    for (int i = 0; i < count; i++)
        if (output_put(out, bufs[i].ptr, (size_t)bufs[i].size) < 0)
            return -1;
    return 0;
}

static int is_binary(const char *data, Py_ssize_t size)
{
    return size > MAX_DIFF_BYTES || memchr(data, 0, (size_t)(size < BINARY_CHECK_BYTES ? size : BINARY_CHECK_BYTES)) != NULL;
}

/* The UTF-8 bytes of a str (an ASCII str's own buffer; other str encoded into a
 * temporary bytes, so the str does not keep a cached copy) or a bytes-like object. */
static int utf8_view(PyObject *text, const char **data, Py_ssize_t *size, Py_buffer *view)
{
    view->obj = NULL;
    if (PyUnicode_Check(text) && PyUnicode_IS_ASCII(text)) {
        *data = PyUnicode_AsUTF8AndSize(text, size);
        return *data ? 0 : -1;
    }
    PyObject *encoded = PyUnicode_Check(text) ? PyUnicode_AsUTF8String(text) : Py_NewRef(text);
    if (!encoded)
        return -1;
    int status = PyObject_GetBuffer(encoded, view, PyBUF_SIMPLE);
    Py_DECREF(encoded);  /* the view holds its own reference */
    if (status < 0)
        return -1;
    *data = view->buf;
    *size = view->len;
    return 0;
}

PyDoc_STRVAR(diff_doc,
"diff(old, new, context_lines=3) -> (text, hunks, added, deleted) or None\n\n"
"The hunks git prints for two file texts (str or bytes), with libgit2's options and\n"
"section headings. None when either side is binary. text is a str: invalid UTF-8\n"
"in the hunks raises UnicodeDecodeError.");

static PyObject *diff(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"old", "new", "context_lines", NULL};
    PyObject *old_obj, *new_obj;
    int context_lines = 3;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|i:diff", keywords, &old_obj, &new_obj, &context_lines))
        return NULL;
    if (context_lines < 0) {
        PyErr_SetString(PyExc_ValueError, "context_lines must be >= 0");
        return NULL;
    }

    Py_buffer old_view, new_view;
    const char *old_data, *new_data;
    Py_ssize_t old_size, new_size;
    if (utf8_view(old_obj, &old_data, &old_size, &old_view) < 0)
        return NULL;
    if (utf8_view(new_obj, &new_data, &new_size, &new_view) < 0) {
        PyBuffer_Release(&old_view);
        return NULL;
    }

    PyObject *result = NULL;
    output_t out = {0};
    int identical = old_size == new_size && memcmp(old_data, new_data, (size_t)old_size) == 0;
    if (identical) {
        result = Py_BuildValue("(s#iii)", "", (Py_ssize_t)0, 0, 0, 0);
    } else if (is_binary(old_data, old_size) || is_binary(new_data, new_size)) {
        result = Py_NewRef(Py_None);
    } else {
        mmfile_t old_file = {(char *)old_data, (long)old_size};
        mmfile_t new_file = {(char *)new_data, (long)new_size};
        xpparam_t params;
        xdemitconf_t config;
        xdemitcb_t callback;
        memset(&params, 0, sizeof(params));
        memset(&config, 0, sizeof(config));
        memset(&callback, 0, sizeof(callback));
        params.flags = XDF_INDENT_HEURISTIC;
        config.ctxlen = context_lines;
        config.interhunkctxlen = 0;
        config.flags = XDL_EMIT_FUNCNAMES;
        config.find_func = find_section_heading;
        callback.priv = &out;
        callback.out_line = emit_line;

        int status;
        Py_BEGIN_ALLOW_THREADS
        status = xdl_diff(&old_file, &new_file, &params, &config, &callback);
        Py_END_ALLOW_THREADS
        if (out.failed)
            PyErr_NoMemory();
        else if (status < 0)
            PyErr_SetString(PyExc_RuntimeError, "xdiff failed");
        else
            result = Py_BuildValue("(s#lll)", out.text.data ? out.text.data : "", (Py_ssize_t)out.text.size, out.hunks, out.added, out.deleted);
    }
    free(out.text.data);
    if (old_view.obj)
        PyBuffer_Release(&old_view);
    if (new_view.obj)
        PyBuffer_Release(&new_view);
    return result;
}

static PyMethodDef methods[] = {
    {"diff", (PyCFunction)(void (*)(void))diff, METH_VARARGS | METH_KEYWORDS, diff_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "diffmix._xdiff", "git's xdiff, called as libgit2 calls it, without hashing the texts.", -1, methods,
};

PyMODINIT_FUNC PyInit__xdiff(void)
{
    return PyModule_Create(&module);
}
