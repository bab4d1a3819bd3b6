/*
 * diffmix._line_stats: per-text statistics counted over UTF-8 bytes where Polars holds them.
 *
 * fill: the line statistics of diffmix.filters.files.line_stats, in one compiled pass over
 * each text (the NumPy version made five passes with several temporary arrays per text:
 * about 1 CPU-s of a 14 CPU-s filters-off build).
 *
 * pretoken_bound: diffmix.filters.tokens.pretoken_lower_bound for pure-ASCII texts (the
 * regex count runs at about 130 MB/s in Polars, the build's dearest score with every filter).
 *
 * fill(buffers, buffer_ids, starts, lengths, ...): the texts where Polars holds them
 * (diffmix.filters.base.Utf8Bytes); for each text it writes the longest line in bytes
 * (without its "\n"), the number of "\n", the bytes after the last "\n", and the
 * number of ASCII letters and digits (int64 outputs of length n).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "pyviews.h"

static void stats_of(const uint8_t *text, int64_t size, int64_t *max_line, int64_t *newlines, int64_t *tail, int64_t *alnum)
{
    /* Two passes over a text that stays in cache: a branch-free count the compiler
     * vectorises, and glibc's memchr from newline to newline. */
    int64_t letters = 0;
    for (int64_t j = 0; j < size; j++) {
        uint8_t byte = text[j];
        /* ASCII letters and digits (unsigned arithmetic wraps below zero). */
        letters += ((uint8_t)(byte - '0') < 10) | ((uint8_t)((byte | 32) - 'a') < 26);
    }
    int64_t longest = 0, count = 0, line_start = 0;
    const uint8_t *nl;
    while (line_start < size && (nl = memchr(text + line_start, '\n', (size_t)(size - line_start))) != NULL) {
        int64_t at = nl - text;
        if (at - line_start > longest)
            longest = at - line_start;
        line_start = at + 1;
        count++;
    }
    int64_t rest = size - line_start;
    *max_line = rest > longest ? rest : longest;
    *newlines = count;
    *tail = rest;
    *alnum = letters;
}

PyDoc_STRVAR(fill_doc,
"fill(buffers, buffer_ids, starts, lengths, max_line, newlines, tail, alnum) -> None\n\n"
"Per text buffers[buffer_ids[i]][starts[i]:starts[i] + lengths[i]] (uint8 buffers, int64\n"
"arrays; diffmix.filters.base.Utf8Bytes): longest line, newline count, bytes after the\n"
"last newline, ASCII letters and digits, written into the four int64 arrays.");

#define N_ARRAYS 7 /* buffer_ids, starts, lengths, then the four outputs */

static PyObject *fill(PyObject *self, PyObject *args)
{
    PyObject *buffer_list, *objs[N_ARRAYS];
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOO:fill", &buffer_list, &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &objs[6]))
        return NULL;
    static const char *names[N_ARRAYS] = {"buffer_ids", "starts", "lengths", "max_line", "newlines", "tail", "alnum"};
    text_buffers_t buffers;
    Py_buffer views[N_ARRAYS];
    int64_t *rows = NULL; /* ids, starts, lengths: copied, so no other thread changes them once checked */
    PyObject *result = NULL;
    int got = 0;
    if (text_buffers_get(buffer_list, &buffers) < 0)
        goto done;
    for (; got < N_ARRAYS; got++)
        if (get_view(objs[got], &views[got], got >= 3, 8, names[got]) < 0)
            goto done;
    Py_ssize_t n = views[0].len / 8;
    for (int k = 1; k < N_ARRAYS; k++)
        if (views[k].len / 8 != n) {
            PyErr_SetString(PyExc_ValueError, "fill: the arrays differ in length");
            goto done;
        }
    rows = PyMem_Malloc((size_t)(3 * (n ? n : 1)) * sizeof(int64_t));
    if (!rows) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(rows, views[0].buf, (size_t)n * sizeof(int64_t));
    memcpy(rows + n, views[1].buf, (size_t)n * sizeof(int64_t));
    memcpy(rows + 2 * n, views[2].buf, (size_t)n * sizeof(int64_t));
    const int64_t *ids = rows, *starts = rows + n, *lengths = rows + 2 * n;
    Py_ssize_t outside = first_text_outside(&buffers, ids, starts, lengths, n);
    if (outside >= 0) {
        PyErr_Format(PyExc_ValueError, "fill: text %zd lies outside its buffer", outside);
        goto done;
    }
    int64_t *out[4] = {views[3].buf, views[4].buf, views[5].buf, views[6].buf};
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        stats_of((const uint8_t *)buffers.views[ids[i]].buf + starts[i], lengths[i], &out[0][i], &out[1][i], &out[2][i], &out[3][i]);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(rows);
    for (int k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    text_buffers_release(&buffers);
    return result;
}

/* The class of an ASCII byte, as Rust's Unicode-aware regex sees it (tested against it):
 * \p{L} is A-Z a-z (1), \p{N} is 0-9 (2), \s is \t \n \v \f \r and space (3); everything else,
 * controls too, is "other" (0). Arithmetic, not a table, so that the loops below vectorise. */
#define SPACE 3u
static inline unsigned ascii_class(uint8_t b)
{
    unsigned letter = (uint8_t)((b | 32) - 'a') < 26;
    unsigned digit = (uint8_t)(b - '0') < 10;
    unsigned space = (b == ' ') | ((uint8_t)(b - '\t') < 5);
    return letter | (digit << 1) | (space * SPACE);
}

/* Does a run start at j (the previous byte's class p, this one's c, the next one's n)? A
 * maximal run of one non-space class, or the first byte of 2+ whitespace (one match of \s{2,}). */
static inline unsigned starts_match(unsigned p, unsigned c, unsigned n)
{
    return ((c != SPACE) & (c != p)) | ((c == SPACE) & (n == SPACE) & (p != SPACE));
}

/* Matches of `\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+|\s{2,}` less matches of `'(?:s|t|re|ve|m|ll|d)`
 * in an ASCII text, as Polars' count_matches counts them; -1 when the text is not ASCII. */
static int64_t pretoken_bound_of(const uint8_t *text, int64_t size)
{
    uint8_t high = 0;
    for (int64_t j = 0; j < size; j++)
        high |= text[j];
    if (high & 0x80)
        return -1;
    if (size == 0)
        return 0;
    const unsigned none = 7; /* the class before the first byte and after the last: no class */
    int64_t runs = starts_match(none, ascii_class(text[0]), size > 1 ? ascii_class(text[1]) : none);
    for (int64_t j = 1; j + 1 < size; j++)
        runs += starts_match(ascii_class(text[j - 1]), ascii_class(text[j]), ascii_class(text[j + 1]));
    if (size > 1)
        runs += starts_match(ascii_class(text[size - 2]), ascii_class(text[size - 1]), none);
    /* Contractions, from apostrophe to apostrophe (rare in code). Their suffixes start with
     * distinct letters, so the byte after the apostrophe picks the one to check. */
    const uint8_t *end = text + size, *q = text;
    while ((q = memchr(q, '\'', (size_t)(end - q))) != NULL && ++q < end) {
        uint8_t next = q[0];
        if (next == 's' || next == 't' || next == 'm' || next == 'd')
            runs--;
        else if (q + 1 < end && ((next == 'r' && q[1] == 'e') || (next == 'v' && q[1] == 'e') || (next == 'l' && q[1] == 'l')))
            runs--;
    }
    return runs;
}

PyDoc_STRVAR(pretoken_bound_doc,
"pretoken_bound(buffers, buffer_ids, starts, lengths, out) -> None\n\n"
"Per text (as for fill), diffmix.filters.tokens.pretoken_lower_bound of a pure-ASCII text\n"
"into the int64 array out; -1 for a text with a byte >= 0x80 (the caller counts those\n"
"with the regex).");

#define N_BOUND_ARRAYS 4 /* buffer_ids, starts, lengths, out */

static PyObject *pretoken_bound(PyObject *self, PyObject *args)
{
    PyObject *buffer_list, *objs[N_BOUND_ARRAYS];
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOO:pretoken_bound", &buffer_list, &objs[0], &objs[1], &objs[2], &objs[3]))
        return NULL;
    static const char *names[N_BOUND_ARRAYS] = {"buffer_ids", "starts", "lengths", "out"};
    text_buffers_t buffers;
    Py_buffer views[N_BOUND_ARRAYS];
    int64_t *rows = NULL;
    PyObject *result = NULL;
    int got = 0;
    if (text_buffers_get(buffer_list, &buffers) < 0)
        goto done;
    for (; got < N_BOUND_ARRAYS; got++)
        if (get_view(objs[got], &views[got], got == 3, 8, names[got]) < 0)
            goto done;
    Py_ssize_t n = views[0].len / 8;
    for (int k = 1; k < N_BOUND_ARRAYS; k++)
        if (views[k].len / 8 != n) {
            PyErr_SetString(PyExc_ValueError, "pretoken_bound: the arrays differ in length");
            goto done;
        }
    rows = PyMem_Malloc((size_t)(3 * (n ? n : 1)) * sizeof(int64_t));
    if (!rows) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(rows, views[0].buf, (size_t)n * sizeof(int64_t));
    memcpy(rows + n, views[1].buf, (size_t)n * sizeof(int64_t));
    memcpy(rows + 2 * n, views[2].buf, (size_t)n * sizeof(int64_t));
    const int64_t *ids = rows, *starts = rows + n, *lengths = rows + 2 * n;
    Py_ssize_t outside = first_text_outside(&buffers, ids, starts, lengths, n);
    if (outside >= 0) {
        PyErr_Format(PyExc_ValueError, "pretoken_bound: text %zd lies outside its buffer", outside);
        goto done;
    }
    int64_t *out = views[3].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = pretoken_bound_of((const uint8_t *)buffers.views[ids[i]].buf + starts[i], lengths[i]);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(rows);
    for (int k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    text_buffers_release(&buffers);
    return result;
}

static PyMethodDef methods[] = {
    {"fill", fill, METH_VARARGS, fill_doc},
    {"pretoken_bound", pretoken_bound, METH_VARARGS, pretoken_bound_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "diffmix._line_stats", "Per-text statistics over UTF-8 bytes (diffmix.filters.files.line_stats, diffmix.filters.tokens).", -1, methods,
};

PyMODINIT_FUNC PyInit__line_stats(void)
{
    return PyModule_Create(&module);
}
