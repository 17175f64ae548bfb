/* The floor of bench_sink.py: the least work any receive loop must do per message, read
 * every byte of the frame (a checksum, so the read cannot be optimised away) and copy the
 * message's PCM (decoded beforehand) onto the end of the segment buffer. No JSON, no base64
 * decoding. Built on the fly by bench_sink.py as a tiny CPython extension, so a call costs
 * what a call into any C extension costs (METH_FASTCALL, no ctypes marshalling).
 *
 *   begin(capacity)      a fresh segment buffer (malloc, like a Sink's segment buffer)
 *   feed(frame, pcm)     one message: bytes, bytes
 *   finish() -> int      segment length
 *   loop(frames, pcms)   the whole segment in one C loop: the floor without Python's
 *                        per-message call
 *   result() -> bytes    the segment (for the correctness check, untimed)
 *   checksum() -> int
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint8_t *segment;
static size_t segment_len, segment_cap;
static uint64_t sum;

/* XOR of 8-byte words: every byte is read, and the loop vectorises to full-width loads
 * (a byte sum would widen each byte and run several times slower) */
static uint64_t read_all(const uint8_t *p, size_t n)
{
    uint64_t s = 0, word;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&word, p + i, 8);
        s ^= word;
    }
    for (; i < n; i++) s ^= (uint64_t)p[i] << (8 * (i % 8));
    return s;
}

static int take(PyObject *frame, PyObject *pcm)
{
    if (!PyBytes_CheckExact(frame) || !PyBytes_CheckExact(pcm)) {
        PyErr_SetString(PyExc_TypeError, "feed(frame: bytes, pcm: bytes)");
        return -1;
    }
    size_t n = (size_t)PyBytes_GET_SIZE(pcm);
    if (segment_len + n > segment_cap) {
        PyErr_SetString(PyExc_ValueError, "segment buffer too small");
        return -1;
    }
    sum ^= read_all((const uint8_t *)PyBytes_AS_STRING(frame), (size_t)PyBytes_GET_SIZE(frame));
    memcpy(segment + segment_len, PyBytes_AS_STRING(pcm), n);
    segment_len += n;
    return 0;
}

static PyObject *floor_begin(PyObject *self, PyObject *arg)
{
    Py_ssize_t cap = PyLong_AsSsize_t(arg);
    if (cap < 0) return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "capacity");
    free(segment);
    segment = malloc(cap ? (size_t)cap : 1);
    if (segment == NULL) return PyErr_NoMemory();
    segment_len = 0;
    segment_cap = (size_t)cap;
    Py_RETURN_NONE;
}

static PyObject *floor_feed(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "feed(frame, pcm)");
        return NULL;
    }
    if (take(args[0], args[1]) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *floor_loop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1])
        || PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[1])) {
        PyErr_SetString(PyExc_TypeError, "loop(frames: list, pcms: list) of one length");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[0]); i++)
        if (take(PyList_GET_ITEM(args[0], i), PyList_GET_ITEM(args[1], i)) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *floor_finish(PyObject *self, PyObject *unused)
{
    return PyLong_FromSize_t(segment_len);
}

static PyObject *floor_result(PyObject *self, PyObject *unused)
{
    return PyBytes_FromStringAndSize((const char *)segment, (Py_ssize_t)segment_len);
}

static PyObject *floor_checksum(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(sum);
}

static PyMethodDef methods[] = {
    {"begin", floor_begin, METH_O, NULL},
    {"feed", (PyCFunction)(void (*)(void))floor_feed, METH_FASTCALL, NULL},
    {"loop", (PyCFunction)(void (*)(void))floor_loop, METH_FASTCALL, NULL},
    {"finish", floor_finish, METH_NOARGS, NULL},
    {"result", floor_result, METH_NOARGS, NULL},
    {"checksum", floor_checksum, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_flushsink_floor", NULL, -1, methods};

PyMODINIT_FUNC PyInit__flushsink_floor(void) { return PyModule_Create(&module); }
