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
 * pretoken_words: texts cut where tokenizers' GPT-2 pre-tokenizer cuts them, as ids of
 * distinct words, for exact token counts (its own pre-tokenizer runs at about 1.5 MB/s here).
 *
 * change: diffmix.filters.change.Change's three scores of each diff in one pass (its Polars
 * regexes made four passes and two joined copies of the changed lines).
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

#include "buffer.h"
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

/* A call's texts: their buffers, and the rows (ids, starts, lengths) copied, so that no other
 * thread changes them once checked, and checked to lie inside their buffers. */
typedef struct {
    text_buffers_t buffers;
    int64_t *rows;
    const int64_t *ids, *starts, *lengths;
    Py_ssize_t n;
} texts_t;

static void texts_release(texts_t *texts)
{
    PyMem_Free(texts->rows);
    text_buffers_release(&texts->buffers);
}

/* 0, or -1 with an exception set (release the texts either way). */
static int texts_get(PyObject *buffer_list, PyObject *const row_arrays[3], texts_t *texts, const char *what)
{
    static const char *names[3] = {"buffer_ids", "starts", "lengths"};
    Py_buffer views[3];
    int got = 0, status = -1;
    memset(texts, 0, sizeof(*texts));
    if (text_buffers_get(buffer_list, &texts->buffers) < 0)
        return -1;
    for (; got < 3; got++)
        if (get_view(row_arrays[got], &views[got], 0, 8, names[got]) < 0)
            goto done;
    Py_ssize_t n = views[0].len / 8;
    if (views[1].len / 8 != n || views[2].len / 8 != n) {
        PyErr_Format(PyExc_ValueError, "%s: the arrays differ in length", what);
        goto done;
    }
    texts->rows = PyMem_Malloc((size_t)(3 * (n ? n : 1)) * sizeof(int64_t));
    if (!texts->rows) {
        PyErr_NoMemory();
        goto done;
    }
    for (int k = 0; k < 3; k++)
        memcpy(texts->rows + k * n, views[k].buf, (size_t)n * sizeof(int64_t));
    texts->ids = texts->rows, texts->starts = texts->rows + n, texts->lengths = texts->rows + 2 * n, texts->n = n;
    Py_ssize_t outside = first_text_outside(&texts->buffers, texts->ids, texts->starts, texts->lengths, n);
    if (outside >= 0) {
        PyErr_Format(PyExc_ValueError, "%s: text %zd lies outside its buffer", what, outside);
        goto done;
    }
    status = 0;
done:
    for (int k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    return status;
}

/* The int64 output arrays of a call, each of `length` items (writable); 0, or -1 with an
 * exception set and none held. */
static int outputs_get(PyObject *const *objs, Py_buffer *views, int count, Py_ssize_t length, const char *const *names, const char *what)
{
    int got = 0;
    for (; got < count; got++) {
        if (get_view(objs[got], &views[got], 1, 8, names[got]) < 0)
            goto fail;
        if (views[got].len / 8 != length) {
            PyBuffer_Release(&views[got]);
            PyErr_Format(PyExc_ValueError, "%s: the arrays differ in length (%s)", what, names[got]);
            goto fail;
        }
    }
    return 0;
fail:
    while (got-- > 0)
        PyBuffer_Release(&views[got]);
    return -1;
}

PyDoc_STRVAR(fill_doc,
"fill(buffers, buffer_ids, starts, lengths, max_line, newlines, tail, alnum) -> None\n\n"
"Per text buffers[buffer_ids[i]][starts[i]:starts[i] + lengths[i]] (uint8 buffers, int64\n"
"arrays; diffmix.filters.base.Utf8Bytes): longest line, newline count, bytes after the\n"
"last newline, ASCII letters and digits, written into the four int64 arrays.");

static PyObject *fill(PyObject *self, PyObject *args)
{
    PyObject *buffer_list, *rows[3], *outs[4];
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOOO:fill", &buffer_list, &rows[0], &rows[1], &rows[2], &outs[0], &outs[1], &outs[2], &outs[3]))
        return NULL;
    static const char *names[4] = {"max_line", "newlines", "tail", "alnum"};
    texts_t texts;
    Py_buffer views[4];
    PyObject *result = NULL;
    if (texts_get(buffer_list, rows, &texts, "fill") == 0 && outputs_get(outs, views, 4, texts.n, names, "fill") == 0) {
        int64_t *out[4] = {views[0].buf, views[1].buf, views[2].buf, views[3].buf};
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < texts.n; i++)
            stats_of((const uint8_t *)texts.buffers.views[texts.ids[i]].buf + texts.starts[i], texts.lengths[i], &out[0][i], &out[1][i], &out[2][i], &out[3][i]);
        Py_END_ALLOW_THREADS
        for (int k = 0; k < 4; k++)
            PyBuffer_Release(&views[k]);
        result = Py_NewRef(Py_None);
    }
    texts_release(&texts);
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

static PyObject *pretoken_bound(PyObject *self, PyObject *args)
{
    PyObject *buffer_list, *rows[3], *outs[1];
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOO:pretoken_bound", &buffer_list, &rows[0], &rows[1], &rows[2], &outs[0]))
        return NULL;
    static const char *names[1] = {"out"};
    texts_t texts;
    Py_buffer view;
    PyObject *result = NULL;
    if (texts_get(buffer_list, rows, &texts, "pretoken_bound") == 0 && outputs_get(outs, &view, 1, texts.n, names, "pretoken_bound") == 0) {
        int64_t *out = view.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < texts.n; i++)
            out[i] = pretoken_bound_of((const uint8_t *)texts.buffers.views[texts.ids[i]].buf + texts.starts[i], texts.lengths[i]);
        Py_END_ALLOW_THREADS
        PyBuffer_Release(&view);
        result = Py_NewRef(Py_None);
    }
    texts_release(&texts);
    return result;
}

/* --- the pre-tokens of pure-ASCII texts, for exact token counts ------------------------- */

/* The end of the pre-token that starts at i < n, as the GPT-2 regex of tokenizers' ByteLevel
 * pre-tokenizer cuts an ASCII text (tested against it):
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static int64_t pretoken_end(const uint8_t *t, int64_t i, int64_t n)
{
    uint8_t c = t[i];
    if (c == '\'' && i + 1 < n) {
        uint8_t d = t[i + 1];
        if (d == 's' || d == 't' || d == 'm' || d == 'd')
            return i + 2;
        if (i + 2 < n && ((d == 'r' && t[i + 2] == 'e') || (d == 'v' && t[i + 2] == 'e') || (d == 'l' && t[i + 2] == 'l')))
            return i + 3;
    }
    int64_t j = (c == ' ' && i + 1 < n && ascii_class(t[i + 1]) != SPACE) ? i + 1 : i; /* the optional leading space */
    unsigned k = ascii_class(t[j]);
    int64_t e = j + 1;
    if (k != SPACE) {
        while (e < n && ascii_class(t[e]) == k)
            e++;
        return e;
    }
    while (e < n && ascii_class(t[e]) == SPACE)
        e++;
    return (e < n && e - i > 1) ? e - 1 : e; /* \s+(?!\S) leaves the last space to the word after it */
}

/* Distinct words by open addressing; a word points into the texts' buffers. Raw allocators:
 * the scan runs without the GIL. */
typedef struct {
    const uint8_t *bytes;
    int64_t size;
    uint64_t hash;
    int32_t id; /* -1: an empty slot */
} word_slot_t;

typedef struct {
    word_slot_t *slots;
    size_t mask; /* capacity - 1, a power of two */
    int32_t count;
} word_set_t;

static int word_set_init(word_set_t *set, size_t capacity)
{
    set->slots = PyMem_RawMalloc(capacity * sizeof(word_slot_t));
    if (!set->slots)
        return -1;
    for (size_t k = 0; k < capacity; k++)
        set->slots[k].id = -1;
    set->mask = capacity - 1;
    set->count = 0;
    return 0;
}

static uint64_t word_hash(const uint8_t *bytes, int64_t size)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a: words are a few bytes long */
    for (int64_t k = 0; k < size; k++)
        h = (h ^ bytes[k]) * 1099511628211ULL;
    return h ^ (h >> 32);
}

/* The word's id, a new one for a word not seen before; -1 when out of memory. */
static int32_t word_id(word_set_t *set, const uint8_t *bytes, int64_t size)
{
    uint64_t hash = word_hash(bytes, size);
    size_t at = (size_t)hash & set->mask;
    for (; set->slots[at].id >= 0; at = (at + 1) & set->mask) {
        const word_slot_t *slot = &set->slots[at];
        if (slot->hash == hash && slot->size == size && memcmp(slot->bytes, bytes, (size_t)size) == 0)
            return slot->id;
    }
    if (set->count == INT32_MAX) /* ids are int32 */
        return -1;
    if (((size_t)set->count + 1) * 2 > set->mask + 1) { /* a load of at most one half */
        word_set_t grown;
        if (word_set_init(&grown, 2 * (set->mask + 1)) < 0)
            return -1;
        for (size_t k = 0; k <= set->mask; k++)
            if (set->slots[k].id >= 0) {
                size_t to = (size_t)set->slots[k].hash & grown.mask;
                while (grown.slots[to].id >= 0)
                    to = (to + 1) & grown.mask;
                grown.slots[to] = set->slots[k];
            }
        grown.count = set->count;
        PyMem_RawFree(set->slots);
        *set = grown;
        for (at = (size_t)hash & set->mask; set->slots[at].id >= 0; at = (at + 1) & set->mask)
            ;
    }
    set->slots[at] = (word_slot_t){bytes, size, hash, set->count};
    return set->count++;
}

typedef struct {
    int32_t *ids;
    Py_ssize_t size, capacity;
} id_list_t;

static int id_list_push(id_list_t *list, int32_t id)
{
    if (list->size == list->capacity) {
        Py_ssize_t grown = list->capacity ? 2 * list->capacity : 4096;
        int32_t *more = PyMem_RawRealloc(list->ids, (size_t)grown * sizeof(int32_t));
        if (!more)
            return -1;
        list->ids = more;
        list->capacity = grown;
    }
    list->ids[list->size++] = id;
    return 0;
}

/* Where a pre-token surely starts, whatever the classes of the non-ASCII characters around:
 * at an ASCII space followed by a printable ASCII character (one that is no space). */
static inline int surely_starts(const uint8_t *t, int64_t p)
{
    return ascii_class(t[p]) == SPACE && (uint8_t)(t[p + 1] - '!') <= '~' - '!';
}

/* Appends the ids of the words of text[0:size) to list; -1 when out of memory. A pure-ASCII
 * text is cut into its pre-tokens; a text with other characters into pieces that each start a
 * pre-token, a piece with a non-ASCII character being one word (tokenizers cuts it). */
static int text_words(const uint8_t *text, int64_t size, word_set_t *set, id_list_t *list)
{
    uint8_t high = 0;
    for (int64_t j = 0; j < size; j++)
        high |= text[j];
    for (int64_t at = 0; at < size;) {
        int64_t end = size, ascii = 1;
        if (high & 0x80) { /* the piece up to the next sure start */
            for (end = at + 1; end + 1 < size && !surely_starts(text, end); end++)
                ;
            if (end + 1 >= size)
                end = size;
            for (int64_t j = at; j < end && ascii; j++)
                ascii = text[j] < 0x80;
        }
        for (int64_t start = at; start < end;) {
            int64_t stop = ascii ? pretoken_end(text, start, end) : end;
            int32_t id = word_id(set, text + start, stop - start);
            if (id < 0 || id_list_push(list, id) < 0)
                return -1;
            start = stop;
        }
        at = end;
    }
    return 0;
}

PyDoc_STRVAR(pretoken_words_doc,
"pretoken_words(buffers, buffer_ids, starts, lengths, firsts) -> (words, word_ids)\n\n"
"Each text (as for fill) cut where the GPT-2 regex of tokenizers' ByteLevel pre-tokenizer cuts\n"
"it: into its pre-tokens where it is ASCII, else into pieces of whole pre-tokens. `words` the\n"
"distinct words (str, in order of first appearance), `word_ids` (native int32 bytes) each\n"
"text's words in order as indices into `words`, text i's at [firsts[i], firsts[i + 1]) (int64,\n"
"n + 1, written). A text's token count is the sum of its words'.");

static PyObject *pretoken_words(PyObject *self, PyObject *args)
{
    PyObject *buffer_list, *rows[3], *outs[1];
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOO:pretoken_words", &buffer_list, &rows[0], &rows[1], &rows[2], &outs[0]))
        return NULL;
    static const char *names[1] = {"firsts"};
    texts_t texts;
    Py_buffer view;
    word_set_t set = {NULL, 0, 0};
    id_list_t list = {NULL, 0, 0};
    PyObject *words = NULL, *result = NULL;
    int failed = 0;
    if (texts_get(buffer_list, rows, &texts, "pretoken_words") < 0)
        goto done;
    if (outputs_get(outs, &view, 1, texts.n + 1, names, "pretoken_words") < 0)
        goto done;
    int64_t *firsts = view.buf;
    if (word_set_init(&set, 1 << 12) < 0)
        failed = 1;
    Py_BEGIN_ALLOW_THREADS
    firsts[0] = 0;
    for (Py_ssize_t i = 0; i < texts.n && !failed; i++) {
        failed = text_words((const uint8_t *)texts.buffers.views[texts.ids[i]].buf + texts.starts[i], texts.lengths[i], &set, &list) < 0;
        firsts[i + 1] = list.size;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    words = PyList_New(set.count);
    if (!words)
        goto done;
    for (size_t k = 0; k <= set.mask; k++)
        if (set.slots[k].id >= 0) {
            PyObject *word = PyUnicode_DecodeUTF8((const char *)set.slots[k].bytes, set.slots[k].size, NULL);
            if (!word)
                goto done;
            PyList_SET_ITEM(words, set.slots[k].id, word);
        }
    PyObject *word_ids = PyBytes_FromStringAndSize((const char *)list.ids, list.size * (Py_ssize_t)sizeof(int32_t));
    if (word_ids)
        result = Py_BuildValue("(ON)", words, word_ids);
done:
    Py_XDECREF(words);
    PyMem_RawFree(list.ids);
    PyMem_RawFree(set.slots);
    texts_release(&texts);
    return result;
}

/* Bytes of the UTF-8 character at t[i] (valid UTF-8), and whether it is \p{White_Space}, as Rust's
 * regex \s sees it: \t-\r, space, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F,
 * U+205F, U+3000. */
static inline int utf8_char(const uint8_t *t, int64_t i, int64_t n, int *space)
{
    uint8_t b = t[i];
    if (b < 0x80) {
        *space = ascii_class(b) == SPACE;
        return 1;
    }
    int size = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : 2;
    if (i + size > n)
        size = (int)(n - i);
    uint8_t b1 = size > 1 ? t[i + 1] : 0, b2 = size > 2 ? t[i + 2] : 0;
    if (size == 2)
        *space = b == 0xc2 && (b1 == 0x85 || b1 == 0xa0);
    else if (size == 3)
        *space = (b == 0xe1 && b1 == 0x9a && b2 == 0x80) ||
                 (b == 0xe2 && b1 == 0x80 && (b2 <= 0x8a || b2 == 0xa8 || b2 == 0xa9 || b2 == 0xaf)) ||
                 (b == 0xe2 && b1 == 0x81 && b2 == 0x9f) || (b == 0xe3 && b1 == 0x80 && b2 == 0x80);
    else
        *space = 0;
    return size;
}

/* diffmix.filters.change.Change's scores of one diff: `+`/`-` lines with a non-space character
 * after the sign, characters of the `-` lines without their signs joined by newlines, and
 * whether the `-` and `+` lines hold the same characters once every space is removed
 * (the non-space characters of each side go to `removed` / `added`, compared at the end).
 * 0, or -1 when out of memory. */
static int change_of(const uint8_t *t, int64_t n, buffer_t *removed, buffer_t *added, int64_t *content_lines, int64_t *deleted_chars, int64_t *whitespace_only)
{
    int64_t content = 0, deleted = 0, minus_lines = 0, i = 0;
    removed->size = added->size = 0;
    while (i < n) {
        const uint8_t *nl = memchr(t + i, '\n', (size_t)(n - i));
        int64_t end = nl ? nl - t : n;
        uint8_t sign = t[i];
        if (sign == '+' || sign == '-') {
            buffer_t *stream = sign == '-' ? removed : added;
            size_t before = stream->size;
            int space;
            for (int64_t j = i + 1; j < end;) {
                int64_t run = j;  /* a run of ASCII non-space bytes, appended at once */
                while (run < end && t[run] > 0x20 && t[run] < 0x80)
                    run++;
                if (run > j && buffer_put(stream, (const char *)t + j, (size_t)(run - j)) < 0)
                    return -1;
                if (run == end)
                    break;
                int size = utf8_char(t, run, end, &space);
                if (!space && buffer_put(stream, (const char *)t + run, (size_t)size) < 0)
                    return -1;
                j = run + size;
            }
            content += stream->size > before;
            if (sign == '-') {
                minus_lines++;
                for (int64_t j = i + 1; j < end; j++)  /* characters: bytes that do not continue one */
                    deleted += (t[j] & 0xc0) != 0x80;
            }
        }
        i = end + 1;
    }
    *content_lines = content;
    *deleted_chars = deleted + (minus_lines > 1 ? minus_lines - 1 : 0);
    *whitespace_only = removed->size == added->size && (removed->size == 0 || memcmp(removed->data, added->data, removed->size) == 0);
    return 0;
}

PyDoc_STRVAR(change_doc,
"change(buffers, buffer_ids, starts, lengths, content_lines, deleted_chars, whitespace_only) -> None\n\n"
"Per diff (texts as for fill): diffmix.filters.change.Change's scores, written into the three\n"
"int64 arrays (whitespace_only as 0 or 1).");

static PyObject *change(PyObject *self, PyObject *args)
{
    PyObject *buffer_list, *rows[3], *outs[3];
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOO:change", &buffer_list, &rows[0], &rows[1], &rows[2], &outs[0], &outs[1], &outs[2]))
        return NULL;
    static const char *names[3] = {"content_lines", "deleted_chars", "whitespace_only"};
    texts_t texts;
    Py_buffer views[3];
    PyObject *result = NULL;
    if (texts_get(buffer_list, rows, &texts, "change") == 0 && outputs_get(outs, views, 3, texts.n, names, "change") == 0) {
        int64_t *out[3] = {views[0].buf, views[1].buf, views[2].buf};
        buffer_t removed = {NULL, 0, 0}, added = {NULL, 0, 0};
        int failed = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < texts.n && !failed; i++)
            failed = change_of((const uint8_t *)texts.buffers.views[texts.ids[i]].buf + texts.starts[i], texts.lengths[i], &removed, &added, &out[0][i], &out[1][i], &out[2][i]) < 0;
        Py_END_ALLOW_THREADS
        free(removed.data);
        free(added.data);
        for (int k = 0; k < 3; k++)
            PyBuffer_Release(&views[k]);
        result = failed ? PyErr_NoMemory() : Py_NewRef(Py_None);
    }
    texts_release(&texts);
    return result;
}

static PyMethodDef methods[] = {
    {"change", change, METH_VARARGS, change_doc},
    {"fill", fill, METH_VARARGS, fill_doc},
    {"pretoken_bound", pretoken_bound, METH_VARARGS, pretoken_bound_doc},
    {"pretoken_words", pretoken_words, METH_VARARGS, pretoken_words_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "diffmix._line_stats", "Per-text statistics over UTF-8 bytes (diffmix.filters.files.line_stats, diffmix.filters.tokens).", -1, methods,
};

PyMODINIT_FUNC PyInit__line_stats(void)
{
    return PyModule_Create(&module);
}
