/* The few CPython macros the glue uses, mapped to functions under the limited API
 * (FLUSHSINK_LIMITED_API=1 builds one cp311-abi3 wheel for every CPython >= 3.11). */
#ifndef FLUSHSINK_PYCOMPAT_H
#define FLUSHSINK_PYCOMPAT_H
#include <Python.h>
#ifdef Py_LIMITED_API
#define FS_BYTES_DATA(o) PyBytes_AsString(o)
#define FS_BYTES_SIZE(o) PyBytes_Size(o)
#else
#define FS_BYTES_DATA(o) PyBytes_AS_STRING(o)
#define FS_BYTES_SIZE(o) PyBytes_GET_SIZE(o)
#endif
#endif
