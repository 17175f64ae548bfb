/* bench_b64.py's C driver: ext/b64.c compiled in (with setup.py's generic flags) and timed
 * from C, so the numbers are the kernels' own, without Python's call and allocation. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <time.h>

#include "b64.c"

/* the thread's CPU time: on a shared machine, other processes' slices do not count */
static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* time_decode(kernel: str, data: bytes, iterations: int, repeats: int) -> best ns per call */
static PyObject *time_decode(PyObject *self, PyObject *args)
{
    const char *kernel;
    Py_buffer src;
    Py_ssize_t iterations, repeats;
    if (!PyArg_ParseTuple(args, "sy*nn", &kernel, &src, &iterations, &repeats)) return NULL;
    PyObject *result = NULL;
    const uint8_t *p = src.buf;
    size_t n = (size_t)src.len, cap = b64_decoded_size(p, n), written, pos;
    uint8_t *dst = malloc(cap ? cap : 1);
    if (dst == NULL) { PyErr_NoMemory(); goto done; }
    if (b64_set_kernel(kernel) != 0) {
        PyErr_Format(PyExc_ValueError, "kernel %s not supported", kernel);
        goto done;
    }
    if (b64_decode(p, n, dst, cap, &written, &pos) != B64_OK) {
        PyErr_SetString(PyExc_ValueError, "invalid base64");
        goto done;
    }
    double best = 1e300;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t r = 0; r < repeats; r++) {
        double start = now_ns();
        for (Py_ssize_t i = 0; i < iterations; i++) {
            b64_decode(p, n, dst, cap, &written, &pos);
            __asm__ volatile("" : : "r"(dst) : "memory");
        }
        double per_call = (now_ns() - start) / (double)iterations;
        if (per_call < best) best = per_call;
    }
    Py_END_ALLOW_THREADS
    result = PyFloat_FromDouble(best);
done:
    free(dst);
    PyBuffer_Release(&src);
    return result;
}

static PyMethodDef methods[] = {
    {"time_decode", time_decode, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_flushsink_b64_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__flushsink_b64_kernels(void) { return PyModule_Create(&module); }
