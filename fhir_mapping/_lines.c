/* Lines of a read of NDJSON, placed in C: the sweep's byte screen (fhir_mapping/mentions.py,
 * cds_hooks/sweep/screen.py) does this for every read of an export, and in Python it cost more than
 * Hyperscan's search of the same bytes. Pure functions of their arguments: no I/O, no state. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* The buffer's range [start, stop), checked: a ValueError for a range outside it. */
static int
range_of(Py_buffer *view, Py_ssize_t start, Py_ssize_t stop)
{
    if (start < 0 || stop < start || stop > view->len) {
        PyErr_SetString(PyExc_ValueError, "range outside the buffer");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(count_lines_doc,
"count_lines(data, start, stop, prefix) -> int\n\n"
"The newlines in data[start:stop] if the byte after each of them, up to `stop`, opens with `prefix`; else -1.");

static PyObject *
count_lines(PyObject *module, PyObject *args)
{
    Py_buffer view, prefix;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTuple(args, "y*nny*", &view, &start, &stop, &prefix))
        return NULL;
    if (range_of(&view, start, stop) < 0) {
        PyBuffer_Release(&view);
        PyBuffer_Release(&prefix);
        return NULL;
    }
    const char *data = view.buf, *want = prefix.buf;
    Py_ssize_t length = prefix.len, lines = 0, at = start;
    while (at < stop) {
        const char *newline = memchr(data + at, '\n', (size_t)(stop - at));
        if (newline == NULL)
            break;
        lines++;
        at = newline - data + 1;
        if (at < stop && (stop - at < length || memcmp(data + at, want, (size_t)length) != 0)) {
            lines = -1;
            break;
        }
    }
    PyBuffer_Release(&view);
    PyBuffer_Release(&prefix);
    return PyLong_FromSsize_t(lines);
}

/* Appends (start, end, roles) to spans; -1 with an exception set on failure. */
static int
append_span(PyObject *spans, Py_ssize_t start, Py_ssize_t end, long roles)
{
    PyObject *span = Py_BuildValue("(nnl)", start, end, roles);
    if (span == NULL)
        return -1;
    int appended = PyList_Append(spans, span);
    Py_DECREF(span);
    return appended;
}

PyDoc_STRVAR(place_doc,
"place(data, start, stop, found) -> list[tuple[int, int, int]]\n\n"
"(start, end, roles) of each line of data[start:stop] holding a match, in order. `found`: the matches of a\n"
"search of data[start:stop] as a flat list, roles then end offset (from `start`) of each, in order of their\n"
"ends. A match is placed by its last byte, or the one before when that is a newline.");

static PyObject *
place(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, stop;
    PyObject *found;
    if (!PyArg_ParseTuple(args, "y*nnO!", &view, &start, &stop, &PyList_Type, &found))
        return NULL;
    PyObject *spans = NULL;
    if (range_of(&view, start, stop) < 0)
        goto done;
    Py_ssize_t count = PyList_GET_SIZE(found);
    if (count % 2 != 0) {
        PyErr_SetString(PyExc_ValueError, "found: roles and an end for each match");
        goto done;
    }
    spans = PyList_New(0);
    if (spans == NULL)
        goto done;
    const char *data = view.buf;
    Py_ssize_t line_start = -1, line_end = -1;
    long roles = 0;
    for (Py_ssize_t index = 0; index < count; index += 2) {
        long matched = PyLong_AsLong(PyList_GET_ITEM(found, index));
        Py_ssize_t end = PyLong_AsSsize_t(PyList_GET_ITEM(found, index + 1));
        if (PyErr_Occurred())
            goto failed;
        Py_ssize_t inside = start + end - 1;
        if (end < 1 || inside >= stop) {
            PyErr_SetString(PyExc_ValueError, "a match ends outside the range");
            goto failed;
        }
        if (data[inside] == '\n' && inside > start)
            inside--;
        if (inside <= line_end) {
            roles |= matched; /* another match in the line just found (a newline belongs to the line it ends) */
            continue;
        }
        if (line_end >= 0 && append_span(spans, line_start, line_end, roles) < 0)
            goto failed;
        roles = matched;
        line_start = start;
        for (Py_ssize_t at = inside; at > start; at--) {
            if (data[at - 1] == '\n') {
                line_start = at;
                break;
            }
        }
        const char *newline = memchr(data + inside, '\n', (size_t)(stop - inside));
        line_end = newline == NULL ? stop : newline - data;
    }
    if (line_end >= 0 && append_span(spans, line_start, line_end, roles) < 0)
        goto failed;
    goto done;
failed:
    Py_CLEAR(spans);
done:
    PyBuffer_Release(&view);
    return spans;
}

static PyMethodDef methods[] = {
    {"count_lines", count_lines, METH_VARARGS, count_lines_doc},
    {"place", place, METH_VARARGS, place_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "fhir_mapping._lines",
    "Lines of a read of NDJSON, counted and placed in C (the sweep's byte screen).", 0, methods, slots,
};

PyMODINIT_FUNC
PyInit__lines(void)
{
    return PyModuleDef_Init(&module);
}
