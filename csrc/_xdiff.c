/*
 * diffmix._xdiff: git's xdiff (vendor/xdiff, as libgit2 1.9.0 ships it), called the
 * way libgit2's git_patch_from_buffers calls it, printing what git_patch_to_buf
 * prints after the file header: hunks only. Also the build's per-row loop for openelm
 * documents (openelm_documents, at the end): diff, document, strict round trip, on the
 * texts where Polars holds them, without a Python string per text.
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

#include <stdint.h>

#include "buffer.h"
#include "pyviews.h"
#include "strict_apply.h"

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

enum { DIFF_OK = 0, DIFF_BINARY = 1, DIFF_NO_MEMORY = -1, DIFF_FAILED = -2 };

/* The hunks of old -> new appended to out (which counts them); identical sides give none.
 * Safe without the GIL. */
static int diff_bytes(const char *old_data, Py_ssize_t old_size, const char *new_data, Py_ssize_t new_size, int context_lines, output_t *out)
{
    if (old_size == new_size && memcmp(old_data, new_data, (size_t)old_size) == 0)
        return DIFF_OK;
    if (is_binary(old_data, old_size) || is_binary(new_data, new_size))
        return DIFF_BINARY;
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
    callback.priv = out;
    callback.out_line = emit_line;
    int status = xdl_diff(&old_file, &new_file, &params, &config, &callback);
    return out->failed ? DIFF_NO_MEMORY : status < 0 ? DIFF_FAILED : DIFF_OK;
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
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = diff_bytes(old_data, old_size, new_data, new_size, context_lines, &out);
    Py_END_ALLOW_THREADS
    if (status == DIFF_BINARY)
        result = Py_NewRef(Py_None);
    else if (status == DIFF_NO_MEMORY)
        PyErr_NoMemory();
    else if (status == DIFF_FAILED)
        PyErr_SetString(PyExc_RuntimeError, "xdiff failed");
    else
        result = Py_BuildValue("(s#lll)", out.text.data ? out.text.data : "", (Py_ssize_t)out.text.size, out.hunks, out.added, out.deleted);
    free(out.text.data);
    if (old_view.obj)
        PyBuffer_Release(&old_view);
    if (new_view.obj)
        PyBuffer_Release(&new_view);
    return result;
}

/* --- the build's fused loop: diff -> openelm document -> strict round trip ---------- */

/* Bytes the C library allocated, handed to Python without a copy (pyarrow wraps them with
 * py_buffer, Polars keeps them); freed with the last reference. */
typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t size;
} block_t;

/* The two largest freed blocks of 1 to 256 MB, kept for the next call's documents and diffs.
 * A partition's documents are tens of MB, above glibc's largest mmap threshold (32 MB): freed,
 * they went back to the kernel and the next partition faulted as much in again, page by page
 * (BENCHMARKS.md, fourteenth round: 13k faults a partition, 5k with the blocks kept). At most
 * 512 MB stays kept, in a long-lived worker of `--dask-address` too. Touched only with the GIL
 * held (deallocation, and `openelm_documents` before it releases the GIL). */
#define KEEP_FROM ((size_t)1 << 20)
#define KEEP_UP_TO ((size_t)256 << 20)
static buffer_t kept[2];

/* Keep data (size bytes allocated) if it outgrows the smaller kept block; 0: the caller frees it. */
static int keep(char *data, size_t size)
{
    if (size < KEEP_FROM || size > KEEP_UP_TO)
        return 0;
    int slot = kept[1].capacity < kept[0].capacity;
    if (kept[slot].capacity >= size)
        return 0;
    free(kept[slot].data);
    kept[slot] = (buffer_t){data, 0, size};
    return 1;
}

/* The larger kept block as an empty buffer (no memory when none is kept), no longer kept. */
static buffer_t take_kept(void)
{
    int slot = kept[1].capacity > kept[0].capacity;
    buffer_t out = kept[slot];
    kept[slot] = (buffer_t){NULL, 0, 0};
    return out;
}

static void block_dealloc(block_t *self)
{
    if (!keep(self->data, (size_t)self->size))
        free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int block_getbuffer(block_t *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data ? self->data : (char *)"", self->size, 1, flags);
}

static PyBufferProcs block_as_buffer = {(getbufferproc)block_getbuffer, NULL};

static PyTypeObject block_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "diffmix._xdiff.Block",
    .tp_basicsize = sizeof(block_t),
    .tp_dealloc = (destructor)block_dealloc,
    .tp_as_buffer = &block_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Read-only bytes owned by the C library's allocator (a buffer-protocol object).",
};

/* A block taking over buf's memory (buf is emptied), trimmed to its size. */
static PyObject *block_of(buffer_t *buf)
{
    block_t *block = PyObject_New(block_t, &block_type);
    if (!block)
        return NULL;
    char *trimmed = buf->size ? realloc(buf->data, buf->size) : NULL;
    if (buf->size && trimmed)
        buf->data = trimmed;
    if (!buf->size) {
        free(buf->data);
        buf->data = NULL;
    }
    block->data = buf->data;
    block->size = (Py_ssize_t)buf->size;
    buf->data = NULL;
    buf->size = buf->capacity = 0;
    return (PyObject *)block;
}

/* Python's len() of valid UTF-8: every byte but the continuation bytes. */
static int64_t utf8_chars(const char *text, Py_ssize_t size)
{
    int64_t count = 0;
    for (Py_ssize_t i = 0; i < size; i++)
        count += ((unsigned char)text[i] & 0xC0) != 0x80;
    return count;
}

static const char *find(const char *haystack, size_t size, const char *needle, size_t needle_size)
{
    return memmem(haystack, size, needle, needle_size);
}

enum { DOC_OK = 0, DOC_BINARY = 1, DOC_ASK_PYTHON = 2 };
enum { NUMBERS = 8 }; /* target_start, bef_start, msg_start, dff_start, diff_chars, n_hunks, added, deleted */
enum { PATH, BEFORE, MESSAGE, AFTER, FIELDS };

#define TAG_SIZE 6 /* "<NME> ", "<BEF> ", ... */
#define ADDFILE "ADDFILE"

/* The round trip of one rendered document as diffmix.formats.edit.OpenElm.parse_document
 * does it (split_openelm, then apply_strict): DOC_OK when the fast path gives `after` back
 * byte for byte; DOC_ASK_PYTHON for anything else (the Python path decides, and classifies). */
static int round_trip(const char *doc, size_t size, const char *after, Py_ssize_t after_size, buffer_t *scratch)
{
    const char *end = doc + size;
    const char *bef = find(doc, size, "\n<BEF> ", 7);
    const char *msg = bef ? find(bef, (size_t)(end - bef), "\n<MSG> ", 7) : NULL;
    const char *dff = msg ? find(msg, (size_t)(end - msg), "\n<DFF> ", 7) : NULL;
    if (size < TAG_SIZE || memcmp(doc, "<NME> ", TAG_SIZE) != 0 || !dff)
        return DOC_ASK_PYTHON;
    const char *before = bef + 7;
    Py_ssize_t before_size = msg - before;
    if (before_size == (Py_ssize_t)strlen(ADDFILE) && memcmp(before, ADDFILE, strlen(ADDFILE)) == 0)
        before_size = 0;
    scratch->size = 0;
    int status = apply_bytes(before, before_size, dff + 7, end - (dff + 7), scratch);
    if (status == FAILED)
        return -1;
    int same = status == APPLIED && (Py_ssize_t)scratch->size == after_size && memcmp(scratch->data ? scratch->data : "", after, (size_t)after_size) == 0;
    return same ? DOC_OK : DOC_ASK_PYTHON;
}

typedef struct {
    buffer_t text, diff, applied;
    output_t hunks;
    int64_t *text_offsets, *diff_offsets, *numbers;
    uint8_t *status;
} documents_t;

static int put_all(buffer_t *out, const char *const *parts, const Py_ssize_t *sizes, int count)
{
    for (int k = 0; k < count; k++)
        if (buffer_put(out, parts[k], (size_t)sizes[k]) < 0)
            return -1;
    return 0;
}

/* Row i's document, diff, numbers and status; -1 when memory runs out or xdiff fails. */
static int document(documents_t *d, Py_ssize_t i, const char *const field[FIELDS], const Py_ssize_t size[FIELDS], int new_file, int context_lines)
{
    output_t *hunks = &d->hunks;
    hunks->text.size = 0;
    hunks->hunks = hunks->added = hunks->deleted = 0;
    int64_t *numbers = d->numbers + i * NUMBERS;
    memset(numbers, 0, NUMBERS * sizeof(int64_t));
    int diffed = diff_bytes(field[BEFORE], size[BEFORE], field[AFTER], size[AFTER], context_lines, hunks);
    if (diffed < 0)
        return diffed;
    size_t doc_start = d->text.size;
    if (diffed == DIFF_BINARY) {
        d->status[i] = DOC_BINARY;
    } else {
        const char *bef_body = new_file ? ADDFILE : field[BEFORE];
        Py_ssize_t bef_size = new_file ? (Py_ssize_t)strlen(ADDFILE) : size[BEFORE];
        const char *parts[] = {"<NME> ", field[PATH], "\n<BEF> ", bef_body, "\n<MSG> ", field[MESSAGE], "\n<DFF> ", hunks->text.data ? hunks->text.data : ""};
        Py_ssize_t sizes[] = {TAG_SIZE, size[PATH], 1 + TAG_SIZE, bef_size, 1 + TAG_SIZE, size[MESSAGE], 1 + TAG_SIZE, (Py_ssize_t)hunks->text.size};
        if (put_all(&d->text, parts, sizes, 8) < 0 || buffer_put(&d->diff, hunks->text.data, hunks->text.size) < 0)
            return DIFF_NO_MEMORY;
        /* Offsets in characters, as Python's len() counts them (trainers index the str). */
        int64_t bef_start = TAG_SIZE + utf8_chars(field[PATH], size[PATH]) + 1;
        int64_t msg_start = bef_start + TAG_SIZE + utf8_chars(bef_body, bef_size) + 1;
        int64_t dff_start = msg_start + TAG_SIZE + utf8_chars(field[MESSAGE], size[MESSAGE]) + 1;
        int64_t values[NUMBERS] = {dff_start + TAG_SIZE, bef_start, msg_start, dff_start, utf8_chars(hunks->text.data, (Py_ssize_t)hunks->text.size), hunks->hunks, hunks->added, hunks->deleted};
        memcpy(numbers, values, sizeof(values));
        int trip = round_trip(d->text.data + doc_start, d->text.size - doc_start, field[AFTER], size[AFTER], &d->applied);
        if (trip < 0)
            return DIFF_NO_MEMORY;
        d->status[i] = (uint8_t)trip;
    }
    d->text_offsets[i + 1] = (int64_t)d->text.size;
    d->diff_offsets[i + 1] = (int64_t)d->diff.size;
    return 0;
}

PyDoc_STRVAR(openelm_documents_doc,
"openelm_documents(buffers, buffer_ids, starts, lengths, new_file, context_lines=3)\n"
"    -> (status, text_offsets, text, diff_offsets, diff, numbers)\n\n"
"The build's per-row loop for the openelm_v1 format, on UTF-8 bytes where Polars holds them\n"
"(diffmix.filters.base.Utf8Bytes): field f of row i (f = path, before, message, after) is\n"
"buffers[buffer_ids[f*n+i]][starts[f*n+i]:][:lengths[f*n+i]] (int64 arrays of length 4n);\n"
"new_file: n bytes (0 or 1). Per row: xdiff, the document, and the strict round trip of the\n"
"document. Returns buffer objects: status (uint8 per row: 0 ok, 1 binary, 2 the round trip\n"
"is for the Python path to decide), the documents and the diffs as Arrow large_string offsets\n"
"(int64, n + 1) and data, and numbers (int64, n x 8: target_start, bef_start, msg_start,\n"
"dff_start, diff_chars, n_hunks, lines_added, lines_deleted; offsets in characters).");

static PyObject *openelm_documents(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"buffers", "buffer_ids", "starts", "lengths", "new_file", "context_lines", NULL};
    PyObject *buffer_list, *objs[4];
    int context_lines = 3;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|i:openelm_documents", keywords, &buffer_list, &objs[0], &objs[1], &objs[2], &objs[3], &context_lines))
        return NULL;
    if (context_lines < 0) {
        PyErr_SetString(PyExc_ValueError, "context_lines must be >= 0");
        return NULL;
    }
    static const char *names[4] = {"buffer_ids", "starts", "lengths", "new_file"};
    text_buffers_t buffers;
    Py_buffer views[4];
    int64_t *rows = NULL;
    uint8_t *new_file = NULL;
    documents_t d;
    memset(&d, 0, sizeof(d));
    PyObject *result = NULL;
    Py_ssize_t n = 0;
    int got = 0, status = 0;
    if (text_buffers_get(buffer_list, &buffers) < 0)
        goto done;
    for (; got < 4; got++)
        if (get_view(objs[got], &views[got], 0, got < 3 ? 8 : 1, names[got]) < 0)
            goto done;
    n = views[3].len;
    for (int k = 0; k < 3; k++)
        if (views[k].len != (Py_ssize_t)(FIELDS * 8) * n) {
            PyErr_SetString(PyExc_ValueError, "openelm_documents: buffer_ids, starts and lengths must hold 4 values per row of new_file");
            goto done;
        }
    /* Copies, so that nothing changes them between the bounds check and the loop. */
    rows = malloc((size_t)(3 * FIELDS * (n ? n : 1)) * sizeof(int64_t));
    new_file = malloc((size_t)(n ? n : 1));
    d.text_offsets = calloc((size_t)(n + 1), sizeof(int64_t));
    d.diff_offsets = calloc((size_t)(n + 1), sizeof(int64_t));
    d.numbers = malloc((size_t)(NUMBERS * (n ? n : 1)) * sizeof(int64_t));
    d.status = malloc((size_t)(n ? n : 1));
    if (!rows || !new_file || !d.text_offsets || !d.diff_offsets || !d.numbers || !d.status) {
        PyErr_NoMemory();
        goto done;
    }
    for (int k = 0; k < 3; k++)
        memcpy(rows + k * FIELDS * n, views[k].buf, (size_t)(FIELDS * n) * sizeof(int64_t));
    memcpy(new_file, views[3].buf, (size_t)n);
    const int64_t *ids = rows, *starts = rows + FIELDS * n, *lengths = rows + 2 * FIELDS * n;
    Py_ssize_t outside = first_text_outside(&buffers, ids, starts, lengths, FIELDS * n);
    if (outside >= 0) {
        PyErr_Format(PyExc_ValueError, "openelm_documents: field %zd of row %zd lies outside its buffer", outside / n, outside % n);
        goto done;
    }
    d.text = take_kept();
    d.diff = take_kept();
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && status == 0; i++) {
        const char *field[FIELDS];
        Py_ssize_t size[FIELDS];
        for (int f = 0; f < FIELDS; f++) {
            Py_ssize_t j = f * n + i;
            field[f] = (const char *)buffers.views[ids[j]].buf + starts[j];
            size[f] = (Py_ssize_t)lengths[j];
        }
        status = document(&d, i, field, size, new_file[i] != 0, context_lines);
    }
    Py_END_ALLOW_THREADS
    if (status == DIFF_NO_MEMORY) {
        PyErr_NoMemory();
        goto done;
    }
    if (status < 0) {
        PyErr_SetString(PyExc_RuntimeError, "xdiff failed");
        goto done;
    }
    buffer_t status_buf = {(char *)d.status, (size_t)n, (size_t)n};
    buffer_t text_offsets = {(char *)d.text_offsets, (size_t)(n + 1) * 8, (size_t)(n + 1) * 8};
    buffer_t diff_offsets = {(char *)d.diff_offsets, (size_t)(n + 1) * 8, (size_t)(n + 1) * 8};
    buffer_t numbers = {(char *)d.numbers, (size_t)(NUMBERS * n) * 8, (size_t)(NUMBERS * (n ? n : 1)) * 8};
    d.status = NULL;
    d.text_offsets = d.diff_offsets = d.numbers = NULL;
    /* Each block_of takes its buffer over, whatever happens to the others. */
    PyObject *blocks[6] = {block_of(&status_buf), block_of(&text_offsets), block_of(&d.text), block_of(&diff_offsets), block_of(&d.diff), block_of(&numbers)};
    int all = 1;
    for (int k = 0; k < 6; k++)
        all = all && blocks[k];
    if (all)
        result = PyTuple_Pack(6, blocks[0], blocks[1], blocks[2], blocks[3], blocks[4], blocks[5]);
    for (int k = 0; k < 6; k++)
        Py_XDECREF(blocks[k]);
    /* What a failed block_of did not take over (the others are NULL now). */
    free(status_buf.data);
    free(text_offsets.data);
    free(diff_offsets.data);
    free(numbers.data);
done:
    free(rows);
    free(new_file);
    free(d.text.data);
    free(d.diff.data);
    free(d.applied.data);
    free(d.hunks.text.data);
    free(d.text_offsets);
    free(d.diff_offsets);
    free(d.numbers);
    free(d.status);
    for (int k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    text_buffers_release(&buffers);
    return result;
}

static PyMethodDef methods[] = {
    {"diff", (PyCFunction)(void (*)(void))diff, METH_VARARGS | METH_KEYWORDS, diff_doc},
    {"openelm_documents", (PyCFunction)(void (*)(void))openelm_documents, METH_VARARGS | METH_KEYWORDS, openelm_documents_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "diffmix._xdiff", "git's xdiff, called as libgit2 calls it, without hashing the texts; and the build's fused diff -> document -> round trip loop.", -1, methods,
};

PyMODINIT_FUNC PyInit__xdiff(void)
{
    if (PyType_Ready(&block_type) < 0)
        return NULL;
    return PyModule_Create(&module);
}
