/*
 * Optional C speed-up of the WebSocket fast path (tidemq/transport/websocket.py).
 *
 * scan(buf, pos, limit) -> (payload, new_pos)
 *
 * Starting at offset `pos` of `buf`, consumes every *complete* frame that is a masked,
 * unfragmented binary frame (first byte 0x82: FIN + binary opcode, no RSV bits) with a
 * 7-bit or minimally encoded 16-bit length of at most `limit` bytes (RFC 6455 §5.2), and
 * returns the unmasked payloads of those frames joined into one bytes object (§5.3: each
 * payload byte i is XORed with key[i % 4], the key restarting with every frame), together
 * with the offset of the first frame it did not consume. It stops at the first frame that
 * is anything else, or not complete yet; the Python code decides what to do with that frame
 * (ping, pong, wait for more bytes, hand the stream over to wsproto). The pure-Python
 * fallback in websocket.py consumes exactly the same frames; tests/transport/test_wsframe.py
 * checks that the two agree.
 *
 * Built by setup.py as an optional extension: without a C compiler the package installs and
 * runs the pure-Python path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Walks the frame headers from `pos`: the offset after the last frame consumed, and the
   total payload length of the frames consumed. */
static Py_ssize_t
walk(const unsigned char *buf, Py_ssize_t size, Py_ssize_t pos, Py_ssize_t limit,
     Py_ssize_t *total)
{
    Py_ssize_t out = 0;
    while (size - pos >= 2) {
        unsigned char b1 = buf[pos + 1];
        Py_ssize_t length = b1 & 0x7F;
        Py_ssize_t start = pos + 6; /* 2 header bytes + 4 mask bytes */
        if (buf[pos] != 0x82 || !(b1 & 0x80) || length == 127) {
            break;
        }
        if (length == 126) {
            if (size - pos < 4) {
                break;
            }
            length = ((Py_ssize_t)buf[pos + 2] << 8) | buf[pos + 3];
            if (length < 126) {
                break; /* not the minimal encoding: a protocol error, left to wsproto */
            }
            start += 2;
        }
        if (length > limit || start + length > size) {
            break;
        }
        out += length;
        pos = start + length;
    }
    *total = out;
    return pos;
}

static void
unmask(unsigned char *dst, const unsigned char *src, Py_ssize_t n, const unsigned char *key)
{
    uint32_t k32;
    uint64_t k64;
    Py_ssize_t i = 0;
    memcpy(&k32, key, 4);
    k64 = ((uint64_t)k32 << 32) | k32; /* the key twice: byte i of it is key[i % 4] */
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k64;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ key[i & 3];
    }
}

static PyObject *
scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t pos, limit, end, total;
    PyObject *payload, *result;
    (void)module;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scan(buf, pos, limit) takes exactly 3 arguments");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pos out of range");
        return NULL;
    }
    {
        const unsigned char *buf = (const unsigned char *)view.buf;
        unsigned char *dst;
        Py_ssize_t p = pos;
        end = walk(buf, view.len, pos, limit, &total);
        payload = PyBytes_FromStringAndSize(NULL, total);
        if (payload == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
        dst = (unsigned char *)PyBytes_AS_STRING(payload);
        /* Second walk over the same (already validated) headers, copying as it goes. */
        while (p < end) {
            Py_ssize_t length = buf[p + 1] & 0x7F;
            Py_ssize_t start = p + 6;
            if (length == 126) {
                length = ((Py_ssize_t)buf[p + 2] << 8) | buf[p + 3];
                start += 2;
            }
            unmask(dst, buf + start, length, buf + start - 4);
            dst += length;
            p = start + length;
        }
    }
    PyBuffer_Release(&view);
    result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(payload);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, payload);
    PyTuple_SET_ITEM(result, 1, PyLong_FromSsize_t(end));
    if (PyTuple_GET_ITEM(result, 1) == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(buf, pos, limit) -> (payload, new_pos): unmask the complete binary frames at pos."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tidemq.transport._wsframe",
    "Optional C speed-up of the WebSocket fast path.", 0, methods,
};

PyMODINIT_FUNC
PyInit__wsframe(void)
{
    return PyModule_Create(&module);
}
