/*
 * _cbridge: the loop <-> worker hand-off of sqlalchemy_anyio, in C.
 *
 * The pure-Python twin is _native.py; both offer the same Job and Channel.
 * What C adds is waiting *without the GIL*:
 *
 * - the worker, once a job is done, spins briefly for the next one before it
 *   parks on a condition variable, so a quick follow-up call costs no OS
 *   wake-up;
 * - the loop, when nothing else is ready to run, may spin briefly for the
 *   job it just handed over (Job.spin_wait) instead of going through its
 *   thread-safe wake-up (a self-pipe write and a second OS wake-up).
 *
 * Spinning only pays when the two sides run on different CPUs.  When the
 * event loop and the workers are packed onto one CPU (thread placement,
 * see _placement.py), a spinner would take the CPU from the very thread it
 * waits for, so nobody spins and workers follow the placement at their
 * next job (set_placement).
 *
 * Every hand-off flag is a C11 atomic: an outcome is written, then published
 * with a release store; whoever sees it with an acquire load sees the outcome.
 * Nothing here relies on the GIL for correctness.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(_WIN32) || defined(__STDC_NO_ATOMICS__) || !defined(__STDC_VERSION__) \
    || __STDC_VERSION__ < 201112L
#error "_cbridge needs C11 atomics and POSIX threads; the pure-Python bridge is used instead"
#endif

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifndef Py_TPFLAGS_IMMUTABLETYPE
#define Py_TPFLAGS_IMMUTABLETYPE 0
#endif

/* -- small helpers ---------------------------------------------------- */

static inline int64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Tell the CPU we are spinning (frees the sibling hyper-thread, saves power). */
static inline void
cpu_relax(void)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_ia32_pause();
#elif defined(__GNUC__) && (defined(__aarch64__) || defined(__arm__))
    __asm__ __volatile__("yield");
#endif
}

#define US 1000
/* Past this, a spinner also offers its CPU to other threads now and then:
 * on a busy machine the thread it waits for may need that very CPU. */
#define YIELD_AFTER_NS (10 * US)

/* Spin until *flag != unwanted or budget_ns passed; returns the last value
 * seen (acquire).  Reads the clock only every 32 rounds: it is not free.
 * With `yield`, past YIELD_AFTER_NS the CPU is offered to others now and
 * then (a worker's spin); the event loop's never yields: on a busy machine
 * one yield can cost a whole time slice, and the loop must not stall. */
static int
spin_while_(_Atomic int *flag, int unwanted, int64_t budget_ns, int yield)
{
    int value = atomic_load_explicit(flag, memory_order_acquire);
    if (value != unwanted || budget_ns <= 0)
        return value;
    int64_t start = now_ns(), now;
    for (unsigned i = 1;; i++) {
        cpu_relax();
        value = atomic_load_explicit(flag, memory_order_acquire);
        if (value != unwanted)
            return value;
        if ((i & 31) == 0) {
            now = now_ns();
            if (now - start >= budget_ns)
                return value;
            if (yield && now - start >= YIELD_AFTER_NS)
                sched_yield();
        }
    }
}

#define spin_while(flag, unwanted, budget_ns) spin_while_(flag, unwanted, budget_ns, 1)

/* Worker spin budget for the next job (ns), from SQLALCHEMY_ANYIO_WORKER_SPIN_US. */
static int64_t worker_spin_max = 100 * US;
/* Workers spinning right now, process-wide, and how many may (half the
 * cores, at least one): the event loop and the workers at work need CPUs
 * too, so with many workers on few cores the others park at once. */
static _Atomic int worker_spinners;
static int max_worker_spinners = 1;
/* How long a worker that found a job waits for the loop to let go of the
 * GIL before asking for it (asking while it is held means sleeping on the
 * GIL's condition variable: one more OS wake-up). */
#define HINT_WAIT_NS (20 * US)

/* Thread placement, set from Python (set_placement) and followed by the
 * workers of placed channels, each on its own thread at its next job.  The
 * CPU set is guarded by a mutex; the generation says it changed. */
static pthread_mutex_t placement_mutex = PTHREAD_MUTEX_INITIALIZER;
#ifdef __linux__
static cpu_set_t placement_cpus;          /* under placement_mutex */
#endif
static _Atomic unsigned placement_gen;    /* bumped by every set_placement */
static _Atomic int placement_packed;      /* placed workers share the loop's CPU */

typedef struct {
    PyTypeObject *job_type;
    PyTypeObject *channel_type;
    PyTypeObject *gate_type;
} bridge_state;

static inline bridge_state *
state_of(PyTypeObject *tp)
{
    return (bridge_state *)PyModule_GetState(PyType_GetModule(tp));
}

/* -- Job ---------------------------------------------------------------- */

enum { PENDING = 0, WAKER = 1, DONE = 2 };   /* Job.state */
enum { HINT_NONE = 0, HINT_SPINNING = 1, HINT_WAITING = 2 };   /* Job.hint */

typedef struct {
    PyObject_HEAD
    PyObject *fn, *args, *kwargs;   /* the call; dropped once it ran */
    PyObject *value, *error;        /* the outcome: written before DONE */
    PyObject *waker;                /* owned by whoever moves state off WAKER */
    _Atomic int state;              /* PENDING -> (WAKER ->) DONE */
    _Atomic int claimed;            /* the outcome may be set once */
    _Atomic int hint;               /* what the loop does while waiting */
} Job;

static PyObject *
Job_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fn", "args", "kwargs", NULL};
    PyObject *fn = Py_None, *fargs = NULL, *fkwargs = Py_None;
    Py_ssize_t n = PyTuple_GET_SIZE(args);

    if (kwds == NULL && n <= 3) {   /* the hot path: Job(fn, args, kwargs) */
        if (n > 0) fn = PyTuple_GET_ITEM(args, 0);
        if (n > 1) fargs = PyTuple_GET_ITEM(args, 1);
        if (n > 2) fkwargs = PyTuple_GET_ITEM(args, 2);
    }
    else if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOO:Job", kwlist,
                                          &fn, &fargs, &fkwargs))
        return NULL;
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "Job fn must be callable or None");
        return NULL;
    }
    if (fargs != NULL && !PyTuple_Check(fargs)) {
        PyErr_SetString(PyExc_TypeError, "Job args must be a tuple");
        return NULL;
    }
    if (fkwargs != Py_None && !PyDict_Check(fkwargs)) {
        PyErr_SetString(PyExc_TypeError, "Job kwargs must be a dict or None");
        return NULL;
    }
    Job *self = (Job *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fn = fn == Py_None ? NULL : Py_NewRef(fn);
    self->args = fargs == NULL ? NULL : Py_NewRef(fargs);
    self->kwargs = (fkwargs == Py_None || PyDict_GET_SIZE(fkwargs) == 0)
                       ? NULL : Py_NewRef(fkwargs);
    atomic_init(&self->state, PENDING);
    atomic_init(&self->claimed, 0);
    atomic_init(&self->hint, HINT_NONE);
    return (PyObject *)self;
}

static int
Job_traverse(Job *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->fn);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    Py_VISIT(self->value);
    Py_VISIT(self->error);
    Py_VISIT(self->waker);
    return 0;
}

static int
Job_clear(Job *self)
{
    Py_CLEAR(self->fn);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    Py_CLEAR(self->value);
    Py_CLEAR(self->error);
    Py_CLEAR(self->waker);
    return 0;
}

static void
Job_dealloc(Job *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Job_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* Run the call and store its outcome, without publishing it; 0 if set()
 * got there first (then set() publishes).  GIL held. */
static int
job_execute(Job *self)
{
    PyObject *fn = self->fn, *args = self->args, *kwargs = self->kwargs;
    PyObject *value = NULL, *error = NULL;
    self->fn = self->args = self->kwargs = NULL;

    if (fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "job has nothing to run");
    }
    else if (args == NULL && kwargs == NULL) {
        value = PyObject_CallNoArgs(fn);
    }
    else {
        PyObject *empty = args == NULL ? PyTuple_New(0) : NULL;
        if (args != NULL || empty != NULL)
            value = PyObject_Call(fn, args ? args : empty, kwargs);
        Py_XDECREF(empty);
    }
    if (value == NULL) {
        /* Keep the exception with its traceback: it names fn's frames. */
#if PY_VERSION_HEX >= 0x030C0000
        error = PyErr_GetRaisedException();
#else
        PyObject *type, *tb;
        PyErr_Fetch(&type, &error, &tb);
        PyErr_NormalizeException(&type, &error, &tb);
        if (tb != NULL)
            PyException_SetTraceback(error, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
#endif
    }
    Py_XDECREF(fn);
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    if (atomic_exchange_explicit(&self->claimed, 1, memory_order_relaxed)) {
        /* Somebody set() the outcome meanwhile; theirs stands. */
        Py_XDECREF(value);
        Py_XDECREF(error);
        return 0;
    }
    self->value = value;
    self->error = error;
    return 1;
}

/* Publish the stored outcome.  Returns the waker to call (a new reference,
 * to be called with the GIL), or NULL.  Needs no GIL. */
static PyObject *
job_publish(Job *self)
{
    int old = atomic_exchange_explicit(&self->state, DONE, memory_order_acq_rel);
    if (old != WAKER)
        return NULL;
    PyObject *waker = self->waker;   /* ours now: set_waker/clear_waker see DONE */
    self->waker = NULL;
    return waker;
}

/* Call a waker we took from job_publish.  GIL held. */
static void
call_waker(PyObject *waker)
{
    if (waker == NULL)
        return;
    PyObject *res = PyObject_CallNoArgs(waker);
    if (res == NULL)
        PyErr_WriteUnraisable(waker);   /* never lose the worker for a waker */
    Py_XDECREF(res);
    Py_DECREF(waker);
}

static PyObject *
Job_run(Job *self, PyObject *Py_UNUSED(ignored))
{
    if (job_execute(self))
        call_waker(job_publish(self));
    Py_RETURN_NONE;
}

static PyObject *
Job_set(Job *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", "error", NULL};
    PyObject *value = Py_None, *error = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:set", kwlist, &value, &error))
        return NULL;
    if (error != Py_None && !PyExceptionInstance_Check(error)) {
        PyErr_SetString(PyExc_TypeError, "error must be an exception instance or None");
        return NULL;
    }
    if (atomic_exchange_explicit(&self->claimed, 1, memory_order_relaxed)) {
        PyErr_SetString(PyExc_RuntimeError, "job outcome already set");
        return NULL;
    }
    Py_XSETREF(self->value, Py_NewRef(value));
    Py_XSETREF(self->error, error == Py_None ? NULL : Py_NewRef(error));
    call_waker(job_publish(self));
    Py_RETURN_NONE;
}

static PyObject *
Job_set_waker(Job *self, PyObject *waker)
{
    int st = atomic_load_explicit(&self->state, memory_order_acquire);
    if (st == WAKER) {   /* replace: take the old one back first */
        if (!atomic_compare_exchange_strong_explicit(&self->state, &st, PENDING,
                                                     memory_order_acq_rel,
                                                     memory_order_acquire))
            Py_RETURN_FALSE;   /* became DONE */
        Py_CLEAR(self->waker);
    }
    if (st == DONE)
        Py_RETURN_FALSE;
    /* The loop will sleep until woken: the worker need not wait for it to
     * drop the GIL (see channel_take). */
    atomic_store_explicit(&self->hint, HINT_WAITING, memory_order_relaxed);
    self->waker = Py_NewRef(waker);
    int expected = PENDING;
    if (atomic_compare_exchange_strong_explicit(&self->state, &expected, WAKER,
                                                memory_order_acq_rel,
                                                memory_order_acquire))
        Py_RETURN_TRUE;
    Py_CLEAR(self->waker);   /* finished meanwhile: nobody will call it */
    Py_RETURN_FALSE;
}

static PyObject *
Job_clear_waker(Job *self, PyObject *Py_UNUSED(ignored))
{
    int expected = WAKER;
    if (atomic_compare_exchange_strong_explicit(&self->state, &expected, PENDING,
                                                memory_order_acq_rel,
                                                memory_order_acquire)) {
        Py_CLEAR(self->waker);
        Py_RETURN_TRUE;
    }
    return PyBool_FromLong(expected != DONE);
}

static PyObject *
Job_spin_wait(Job *self, PyObject *arg)
{
    double budget = PyFloat_AsDouble(arg);
    if (budget == -1.0 && PyErr_Occurred())
        return NULL;
    if (atomic_load_explicit(&self->state, memory_order_acquire) == DONE)
        Py_RETURN_TRUE;
    if (!(budget > 0))
        Py_RETURN_FALSE;
    int64_t budget_ns = budget > 1.0 ? 1000000000 : (int64_t)(budget * 1e9);
    int st;
    Py_BEGIN_ALLOW_THREADS
    atomic_store_explicit(&self->hint, HINT_SPINNING, memory_order_release);
    st = spin_while_(&self->state, PENDING, budget_ns, 0);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(st == DONE);
}

static PyObject *
Job_outcome(Job *self, PyObject *Py_UNUSED(ignored))
{
    if (atomic_load_explicit(&self->state, memory_order_acquire) != DONE) {
        PyErr_SetString(PyExc_RuntimeError, "job is not finished");
        return NULL;
    }
    if (self->error != NULL) {
#if PY_VERSION_HEX >= 0x030C0000
        PyErr_SetRaisedException(Py_NewRef(self->error));
#else
        PyErr_Restore(Py_NewRef(Py_TYPE(self->error)), Py_NewRef(self->error),
                      PyException_GetTraceback(self->error));
#endif
        return NULL;
    }
    return Py_NewRef(self->value ? self->value : Py_None);
}

static PyObject *
Job_get_done(Job *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(atomic_load_explicit(&self->state, memory_order_acquire) == DONE);
}

static PyMethodDef Job_methods[] = {
    {"run", (PyCFunction)Job_run, METH_NOARGS,
     "Run the callable (on the worker thread) and publish its outcome."},
    {"set", (PyCFunction)(void (*)(void))Job_set, METH_VARARGS | METH_KEYWORDS,
     "Publish the outcome once, from any thread, and wake the waiter."},
    {"set_waker", (PyCFunction)Job_set_waker, METH_O,
     "Arrange for waker() on completion; False if already complete."},
    {"clear_waker", (PyCFunction)Job_clear_waker, METH_NOARGS,
     "Withdraw the waker; True if it will now never be called."},
    {"spin_wait", (PyCFunction)Job_spin_wait, METH_O,
     "Wait up to budget seconds for completion, spinning without the GIL."},
    {"outcome", (PyCFunction)Job_outcome, METH_NOARGS,
     "Return the value or raise the error of a completed job."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Job_getset[] = {
    {"done", (getter)Job_get_done, NULL, "True once the outcome is published.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Job_slots[] = {
    {Py_tp_doc, "A unit of work (or a bare signal when fn is None) and its outcome."},
    {Py_tp_new, Job_new},
    {Py_tp_dealloc, Job_dealloc},
    {Py_tp_traverse, Job_traverse},
    {Py_tp_clear, Job_clear},
    {Py_tp_methods, Job_methods},
    {Py_tp_getset, Job_getset},
    {0, NULL},
};

static PyType_Spec Job_spec = {
    .name = "sqlalchemy_anyio._bridge._cbridge.Job",
    .basicsize = sizeof(Job),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Job_slots,
};

/* -- Channel and Gate ----------------------------------------------------- */

/* A Channel is a FIFO of jobs (or None) from any thread to the one worker
 * serving it.  The ring is guarded by the channel's mutex; `pending` mirrors
 * its length so the worker can spin on it without the mutex.
 *
 * A Gate bounds how many channels run jobs at once (process-wide, shared by
 * the channels created with it).  A channel with jobs but no place waits in
 * line, in order; a channel that runs out of jobs hands its place straight
 * to the first in line.  A job running longer than `expire_ns` (blocked on
 * the database, most likely) loses its place, so a slow query never holds
 * the others up for longer than that; the first in line is the one that
 * watches for it (a timed wait).
 *
 * Locks: a gate's mutex may be taken with no channel mutex held, and then
 * channel mutexes may be taken under it (to signal); never the reverse.
 * Channel gate fields are written under the gate mutex and read, by the
 * worker, through their atomic mirrors. */

#define GATE_MAX_LIMIT 1024

typedef struct Channel Channel;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mutex;
    int limit;                      /* places; 0: the gate is open */
    int64_t expire_ns;
    int active;                     /* under mutex: channels holding a place */
    Channel **admitted;             /* under mutex: those channels */
    Channel *line_head, *line_tail; /* under mutex: waiting for a place */
} Gate;

struct Channel {
    PyObject_HEAD
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    PyObject **ring;
    Py_ssize_t cap, head, len;      /* under mutex */
    int parked;                     /* under mutex: the worker sleeps on cond */
    int closed;                     /* under mutex: None was put */
    _Atomic int pending;            /* == len, readable without the mutex */
    _Atomic int64_t spin_ns;        /* the worker's current spin budget */
    int64_t spin_max;               /* its ceiling (Channel(worker_spin=)) */
    Gate *gate;                     /* NULL: no admission */
    Channel *line_next;             /* under gate mutex */
    _Atomic int admitted;           /* written under gate mutex: holds a place */
    _Atomic int waiting;            /* written under gate mutex: in line */
    _Atomic int first;              /* written under gate mutex: first in line */
    _Atomic int64_t started_ns;     /* the running job's start; 0 between jobs */
    int placed;                     /* follows the thread placement */
    unsigned placed_gen;            /* worker thread only: the placement applied */
    int policy;                     /* worker thread only: its own policy, -1 unknown */
};

/* Wake a channel's worker; gate mutex held, channel mutex not. */
static void
channel_signal(Channel *ch)
{
    pthread_mutex_lock(&ch->mutex);
    pthread_cond_signal(&ch->cond);
    pthread_mutex_unlock(&ch->mutex);
}

static void
gate_admit_locked(Gate *g, Channel *ch)
{
    g->admitted[g->active++] = ch;
    atomic_store_explicit(&ch->admitted, 1, memory_order_release);
}

static void
gate_unadmit_locked(Gate *g, int i)
{
    Channel *ch = g->admitted[i];
    g->admitted[i] = g->admitted[--g->active];
    atomic_store_explicit(&ch->admitted, 0, memory_order_release);
}

static void
gate_unlink_locked(Gate *g, Channel *ch)
{
    Channel **p = &g->line_head, *prev = NULL;
    while (*p != NULL && *p != ch) {
        prev = *p;
        p = &(*p)->line_next;
    }
    if (*p == NULL)
        return;
    *p = ch->line_next;
    if (g->line_tail == ch)
        g->line_tail = prev;
    ch->line_next = NULL;
    atomic_store_explicit(&ch->waiting, 0, memory_order_release);
    atomic_store_explicit(&ch->first, 0, memory_order_release);
}

/* Fill free places from the line and wake who got one; a new first in
 * line is woken too, to start watching for slow jobs. */
static void
gate_advance_locked(Gate *g, Channel *first_before)
{
    while (g->line_head != NULL && g->active < g->limit) {
        Channel *ch = g->line_head;
        gate_unlink_locked(g, ch);
        gate_admit_locked(g, ch);
        channel_signal(ch);
    }
    Channel *first = g->line_head;
    if (first != NULL && first != first_before) {
        atomic_store_explicit(&first->first, 1, memory_order_release);
        channel_signal(first);
    }
}

/* Give `ch` a place, or put it in line. */
static void
gate_enter(Gate *g, Channel *ch)
{
    pthread_mutex_lock(&g->mutex);
    if (!atomic_load_explicit(&ch->admitted, memory_order_relaxed)
        && !atomic_load_explicit(&ch->waiting, memory_order_relaxed)) {
        if (g->active < g->limit && g->line_head == NULL) {
            gate_admit_locked(g, ch);
            channel_signal(ch);
        }
        else {
            ch->line_next = NULL;
            if (g->line_tail != NULL)
                g->line_tail->line_next = ch;
            else
                g->line_head = ch;
            g->line_tail = ch;
            atomic_store_explicit(&ch->waiting, 1, memory_order_release);
            if (g->line_head == ch) {
                atomic_store_explicit(&ch->first, 1, memory_order_release);
                channel_signal(ch);
            }
        }
    }
    pthread_mutex_unlock(&g->mutex);
}

/* `ch` gives up its place (or its turn). */
static void
gate_leave(Gate *g, Channel *ch)
{
    pthread_mutex_lock(&g->mutex);
    Channel *first = g->line_head;
    int found = 0;
    for (int i = 0; i < g->active; i++) {
        if (g->admitted[i] == ch) {
            gate_unadmit_locked(g, i);
            found = 1;
            break;
        }
    }
    if (!found && atomic_load_explicit(&ch->waiting, memory_order_relaxed)) {
        gate_unlink_locked(g, ch);
        found = 1;
    }
    if (found)
        gate_advance_locked(g, first);
    pthread_mutex_unlock(&g->mutex);
}

/* Take the places of jobs running longer than expire_ns. */
static void
gate_expire(Gate *g)
{
    int64_t now = now_ns();
    pthread_mutex_lock(&g->mutex);
    Channel *first = g->line_head;
    for (int i = g->active - 1; i >= 0; i--) {
        int64_t started = atomic_load_explicit(&g->admitted[i]->started_ns,
                                               memory_order_relaxed);
        if (started != 0 && now - started > g->expire_ns)
            gate_unadmit_locked(g, i);
    }
    gate_advance_locked(g, first);
    pthread_mutex_unlock(&g->mutex);
}

static PyObject *
Gate_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"limit", "expire", NULL};
    int limit = 0;
    double expire = 0.002;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|id:Gate", kwlist, &limit, &expire))
        return NULL;
    if (limit < 0 || limit > GATE_MAX_LIMIT || !(expire > 0) || expire > 3600) {
        PyErr_Format(PyExc_ValueError,
                     "Gate needs 0 <= limit <= %d and 0 < expire <= 3600", GATE_MAX_LIMIT);
        return NULL;
    }
    Gate *self = (Gate *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->admitted = PyMem_RawCalloc((size_t)(limit > 0 ? limit : 1), sizeof(Channel *));
    if (self->admitted == NULL || pthread_mutex_init(&self->mutex, NULL) != 0) {
        PyMem_RawFree(self->admitted);
        self->admitted = NULL;
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->limit = limit;
    self->expire_ns = (int64_t)(expire * 1e9);
    return (PyObject *)self;
}

static void
Gate_dealloc(Gate *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->admitted != NULL) {   /* no channel refers to us any more */
        pthread_mutex_destroy(&self->mutex);
        PyMem_RawFree(self->admitted);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
Gate_get_active(Gate *self, void *Py_UNUSED(closure))
{
    pthread_mutex_lock(&self->mutex);
    int active = self->active;
    pthread_mutex_unlock(&self->mutex);
    return PyLong_FromLong(active);
}

static PyObject *
Gate_get_limit(Gate *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->limit);
}

static PyObject *
Gate_get_expire(Gate *self, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble((double)self->expire_ns / 1e9);
}

/* In a child made by fork(): the channels in the gate belonged to threads
 * that do not exist here, and the mutex may have been held by one of them.
 * Start afresh: no place taken, nobody in line. */
static PyObject *
Gate_reset_after_fork(Gate *self, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_init(&self->mutex, NULL);
    for (int i = 0; i < self->active; i++)
        self->admitted[i] = NULL;
    self->active = 0;
    self->line_head = self->line_tail = NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Gate_methods[] = {
    {"reset_after_fork", (PyCFunction)Gate_reset_after_fork, METH_NOARGS,
     "In a forked child: forget the parent's channels, renew the lock."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Gate_getset[] = {
    {"active", (getter)Gate_get_active, NULL, "Channels holding a place now.", NULL},
    {"limit", (getter)Gate_get_limit, NULL, "Places (0: no limit).", NULL},
    {"expire", (getter)Gate_get_expire, NULL,
     "Seconds after which a running job gives its place up.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Gate_slots[] = {
    {Py_tp_doc, "Admission: at most limit channels run jobs at once (0: no limit)."},
    {Py_tp_new, Gate_new},
    {Py_tp_dealloc, Gate_dealloc},
    {Py_tp_getset, Gate_getset},
    {Py_tp_methods, Gate_methods},
    {0, NULL},
};

static PyType_Spec Gate_spec = {
    .name = "sqlalchemy_anyio._bridge._cbridge.Gate",
    .basicsize = sizeof(Gate),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Gate_slots,
};

static PyObject *
Channel_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"gate", "placed", "worker_spin", NULL};
    PyObject *gate = Py_None, *worker_spin = Py_None;
    int placed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OpO:Channel", kwlist, &gate, &placed,
                                     &worker_spin))
        return NULL;
    bridge_state *st = state_of(type);
    if (gate != Py_None && Py_TYPE(gate) != st->gate_type) {
        PyErr_SetString(PyExc_TypeError, "Channel(gate) takes a Gate or None");
        return NULL;
    }
    int64_t spin_max = worker_spin_max;
    if (worker_spin != Py_None) {
        double seconds = PyFloat_AsDouble(worker_spin);
        if (seconds == -1.0 && PyErr_Occurred())
            return NULL;
        if (!(seconds >= 0) || seconds > 1) {
            PyErr_SetString(PyExc_ValueError, "Channel needs 0 <= worker_spin <= 1 (seconds)");
            return NULL;
        }
        spin_max = (int64_t)(seconds * 1e9);
    }
    Channel *self = (Channel *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->cap = 8;
    self->ring = PyMem_RawCalloc((size_t)self->cap, sizeof(PyObject *));
    if (self->ring == NULL || pthread_mutex_init(&self->mutex, NULL) != 0) {
        PyMem_RawFree(self->ring);
        self->ring = NULL;
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    pthread_cond_init(&self->cond, NULL);
    atomic_init(&self->pending, 0);
    self->spin_max = spin_max;
    atomic_init(&self->spin_ns, spin_max);
    atomic_init(&self->admitted, 0);
    atomic_init(&self->waiting, 0);
    atomic_init(&self->first, 0);
    atomic_init(&self->started_ns, 0);
    if (gate != Py_None && ((Gate *)gate)->limit > 0)
        self->gate = (Gate *)Py_NewRef(gate);
    self->placed = placed;
    self->policy = -1;
    return (PyObject *)self;
}

static int
Channel_traverse(Channel *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->gate);
    if (self->ring == NULL)
        return 0;
    pthread_mutex_lock(&self->mutex);
    for (Py_ssize_t i = 0; i < self->len; i++) {
        int r = visit(self->ring[(self->head + i) % self->cap], arg);
        if (r) {
            pthread_mutex_unlock(&self->mutex);
            return r;
        }
    }
    pthread_mutex_unlock(&self->mutex);
    return 0;
}

static int
Channel_clear(Channel *self)
{
    if (self->ring == NULL)
        return 0;
    for (;;) {   /* drop items one by one, never under the mutex */
        PyObject *item = NULL;
        pthread_mutex_lock(&self->mutex);
        if (self->len > 0) {
            item = self->ring[self->head];
            self->head = (self->head + 1) % self->cap;
            self->len--;
            atomic_fetch_sub_explicit(&self->pending, 1, memory_order_relaxed);
        }
        pthread_mutex_unlock(&self->mutex);
        if (item == NULL)
            return 0;
        Py_DECREF(item);
    }
}

static void
Channel_dealloc(Channel *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->gate != NULL) {   /* nobody may find us in the gate any more */
        gate_leave(self->gate, self);
        Py_CLEAR(self->gate);
    }
    Channel_clear(self);
    if (self->ring != NULL) {
        pthread_cond_destroy(&self->cond);
        pthread_mutex_destroy(&self->mutex);
        PyMem_RawFree(self->ring);
    }
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
Channel_put(Channel *self, PyObject *item)
{
    if (item != Py_None && Py_TYPE(item) != state_of(Py_TYPE(self))->job_type) {
        PyErr_SetString(PyExc_TypeError, "Channel.put() takes a Job or None");
        return NULL;
    }
    pthread_mutex_lock(&self->mutex);
    if (self->closed) {
        /* A job put now would never run: say so rather than hang its caller. */
        pthread_mutex_unlock(&self->mutex);
        if (item == Py_None)
            Py_RETURN_NONE;   /* stopping twice is fine */
        PyErr_SetString(PyExc_RuntimeError, "the worker is stopped: it takes no more jobs");
        return NULL;
    }
    if (self->len == self->cap) {
        PyObject **ring = PyMem_RawMalloc(2 * (size_t)self->cap * sizeof(PyObject *));
        if (ring == NULL) {
            pthread_mutex_unlock(&self->mutex);
            return PyErr_NoMemory();
        }
        for (Py_ssize_t i = 0; i < self->len; i++)
            ring[i] = self->ring[(self->head + i) % self->cap];
        PyMem_RawFree(self->ring);
        self->ring = ring;
        self->head = 0;
        self->cap *= 2;
    }
    self->ring[(self->head + self->len) % self->cap] = Py_NewRef(item);   /* the worker's */
    self->len++;
    self->closed = item == Py_None;
    atomic_fetch_add_explicit(&self->pending, 1, memory_order_release);
    int admitted = self->gate == NULL || item == Py_None
                   || atomic_load_explicit(&self->admitted, memory_order_acquire);
    if (self->parked && admitted)
        pthread_cond_signal(&self->cond);
    pthread_mutex_unlock(&self->mutex);
    if (!admitted)   /* ask for a place; the gate wakes the worker when it has one */
        gate_enter(self->gate, self);   /* short, and never needs the GIL: keep it */
    Py_RETURN_NONE;
}

/* May the worker take the next item now?  Channel mutex held. */
static inline int
channel_runnable(Channel *self)
{
    return self->len > 0
           && (self->gate == NULL || self->ring[self->head] == Py_None
               || atomic_load_explicit(&self->admitted, memory_order_acquire));
}

/* Take the next item (a new reference) if it may be taken now, else NULL.
 * Needs no GIL: only the mutex.  `gated` ignores the gate (Channel.get). */
static PyObject *
channel_pop(Channel *self, int gated)
{
    PyObject *item = NULL;
    pthread_mutex_lock(&self->mutex);
    if (gated ? channel_runnable(self) : self->len > 0) {
        item = self->ring[self->head];
        self->ring[self->head] = NULL;
        self->head = (self->head + 1) % self->cap;
        self->len--;
        atomic_fetch_sub_explicit(&self->pending, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&self->mutex);
    return item;
}

/* Whether this channel's worker shares one CPU with the event loop now:
 * then it never spins, since spinning would only keep the thread it waits
 * for off that CPU. */
static inline int
channel_packed(Channel *self)
{
    return self->placed && atomic_load_explicit(&placement_packed, memory_order_relaxed);
}

/* Move the worker's thread to the CPUs the placement names, if it changed
 * since this worker's last job.  While packed, a worker of the usual policy
 * runs as SCHED_BATCH: woken (its reply arrived, a job came) it waits for
 * the running thread to stop rather than preempt it, and so never takes the
 * CPU from a thread that holds the GIL only to wait for that GIL.  Measured
 * on PostgreSQL: 4.7 instead of 6.9 context switches per web request, 8%
 * less CPU.  Worker thread only; needs no GIL.  Best effort: a refusal
 * leaves the thread as it was. */
static void
channel_follow_placement(Channel *self)
{
#ifdef __linux__
    cpu_set_t cpus;
    int packed;
    pthread_mutex_lock(&placement_mutex);
    cpus = placement_cpus;
    packed = atomic_load_explicit(&placement_packed, memory_order_relaxed);
    self->placed_gen = atomic_load_explicit(&placement_gen, memory_order_relaxed);
    pthread_mutex_unlock(&placement_mutex);
    if (CPU_COUNT(&cpus) > 0)
        sched_setaffinity(0, sizeof cpus, &cpus);
    if (self->policy == -1)
        self->policy = sched_getscheduler(0);
    if (self->policy == SCHED_OTHER) {
        struct sched_param param = {0};
        sched_setscheduler(0, packed ? SCHED_BATCH : SCHED_OTHER, &param);
    }
#else
    self->placed_gen = atomic_load_explicit(&placement_gen, memory_order_relaxed);
#endif
}

/* Waiting for the next item, without the GIL, in three steps: spin for the
 * adaptive budget, park if nothing came, take the item.  The budget resets
 * to the maximum whenever a job arrived within it, and halves each time the
 * worker had to park longer than that: a worker that sees no work stops
 * spinning, and a parked one burns nothing. */

/* A job came: the loop asks the gate for a place right after queuing it
 * (Channel.put).  Wait the moment that takes (admitted, or put in line)
 * rather than park and be woken for it. */
#define GATE_WAIT_NS (20 * US)

static void
channel_await_gate(Channel *self, int64_t budget_ns)
{
    int64_t start = now_ns();
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&self->admitted, memory_order_acquire)
            || atomic_load_explicit(&self->waiting, memory_order_acquire))
            return;
        cpu_relax();
        if ((i & 31) == 0 && now_ns() - start >= budget_ns)
            return;
    }
}

/* Spin; 1 if an item came within the budget.  `since` notes when we began. */
static int
channel_spin(Channel *self, int64_t *since)
{
    int64_t budget = atomic_load_explicit(&self->spin_ns, memory_order_relaxed);
    int spin = budget > 0 && !channel_packed(self);
    int found;
    *since = now_ns();
    if (spin && atomic_fetch_add(&worker_spinners, 1) < max_worker_spinners)
        found = spin_while(&self->pending, 0, budget) != 0;
    else   /* packed, or enough workers spin already: it would only take CPU from the rest */
        found = atomic_load_explicit(&self->pending, memory_order_acquire) != 0;
    if (spin)
        atomic_fetch_sub(&worker_spinners, 1);
    if (!found)
        return 0;
    if (self->gate != NULL && !channel_packed(self))
        channel_await_gate(self, GATE_WAIT_NS);
    if (budget != self->spin_max)
        atomic_store_explicit(&self->spin_ns, self->spin_max, memory_order_relaxed);
    return 1;
}

/* Sleep until an item may be taken.  With a gate: a channel that lost its
 * place while its job ran gets back in line; the first in line wakes every
 * expire_ns to take the places of slow jobs. */
static void
channel_wait(Channel *self, int64_t since)
{
    Gate *g = self->gate;
    int slept = 0;
    for (;;) {
        pthread_mutex_lock(&self->mutex);
        if (channel_runnable(self)) {
            pthread_mutex_unlock(&self->mutex);
            break;
        }
        int lost = g != NULL && self->len > 0
                   && !atomic_load_explicit(&self->admitted, memory_order_acquire)
                   && !atomic_load_explicit(&self->waiting, memory_order_acquire);
        int timed_out = 0;
        if (!lost) {
            int first = g != NULL && atomic_load_explicit(&self->first, memory_order_acquire);
            self->parked = 1;
            if (first) {
                struct timespec until;
                clock_gettime(CLOCK_REALTIME, &until);
                int64_t ns = until.tv_nsec + g->expire_ns;
                until.tv_sec += ns / 1000000000;
                until.tv_nsec = ns % 1000000000;
                timed_out = pthread_cond_timedwait(&self->cond, &self->mutex, &until) == ETIMEDOUT;
            }
            else
                pthread_cond_wait(&self->cond, &self->mutex);
            self->parked = 0;
            slept = 1;
        }
        pthread_mutex_unlock(&self->mutex);
        if (lost)
            gate_enter(g, self);
        else if (timed_out)
            gate_expire(g);
    }
    if (!slept)
        return;
    int64_t gap = now_ns() - since;
    int64_t budget = atomic_load_explicit(&self->spin_ns, memory_order_relaxed);
    budget = gap <= self->spin_max ? self->spin_max : budget >= 2 * US ? budget / 2 : 0;
    atomic_store_explicit(&self->spin_ns, budget, memory_order_relaxed);
}

static PyObject *
channel_take(Channel *self)
{
    PyObject *item = channel_pop(self, 1);   /* the only consumer: it is there */
#ifndef Py_GIL_DISABLED
    /* The loop that queued this job probably still holds the GIL.  If it is
     * about to spin (and so to let go of it), wait for that rather than
     * sleep on the GIL. */
    if (item != Py_None && !channel_packed(self))
        spin_while(&((Job *)item)->hint, HINT_NONE, HINT_WAIT_NS);
#endif
    return item;
}

static int
channel_runnable_now(Channel *self)
{
    pthread_mutex_lock(&self->mutex);
    int runnable = channel_runnable(self);
    pthread_mutex_unlock(&self->mutex);
    return runnable;
}

/* Out of jobs: hand the place on.  No GIL needed. */
static void
channel_idle(Channel *self)
{
    if (self->gate == NULL)
        return;
    if (atomic_load_explicit(&self->pending, memory_order_acquire) != 0)
        return;   /* more came already: keep the place */
    if (atomic_load_explicit(&self->admitted, memory_order_acquire)
        || atomic_load_explicit(&self->waiting, memory_order_acquire))
        gate_leave(self->gate, self);
}

static PyObject *
Channel_get(Channel *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *item = channel_pop(self, 0);
    if (item == NULL) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->mutex);
        self->parked = 1;
        while (self->len == 0)
            pthread_cond_wait(&self->cond, &self->mutex);
        self->parked = 0;
        pthread_mutex_unlock(&self->mutex);
        item = channel_pop(self, 0);
        Py_END_ALLOW_THREADS
    }
    return item;
}

/* The worker's loop: run jobs until None.  An outcome found with no waker
 * yet (the loop is spinning, or busy) is published only after the GIL is
 * released, so the loop can take the GIL at once when it sees it. */
static PyObject *
Channel_serve(Channel *self, PyObject *Py_UNUSED(ignored))
{
    Job *ran = NULL;   /* outcome stored, not yet published; then still ours */
    for (;;) {
        PyObject *item = channel_pop(self, 1);
        if (item == NULL) {
            int64_t since;
            PyObject *waker = NULL;
            PyThreadState *ts = PyEval_SaveThread();
            if (ran != NULL && (waker = job_publish(ran)) != NULL) {
                /* The loop stopped spinning and sleeps: wake it. */
                PyEval_RestoreThread(ts);
                call_waker(waker);
                ts = PyEval_SaveThread();
            }
            channel_idle(self);
            if (!channel_spin(self, &since) || !channel_runnable_now(self)) {
                if (ran != NULL) {
                    /* Idle from now on: do not keep the job (and whatever
                     * its outcome holds) alive while waiting. */
                    PyEval_RestoreThread(ts);
                    Py_CLEAR(ran);
                    ts = PyEval_SaveThread();
                }
                channel_wait(self, since);
            }
            item = channel_take(self);
            PyEval_RestoreThread(ts);
        }
        else if (ran != NULL) {
            call_waker(job_publish(ran));
        }
        Py_XDECREF(ran);
        ran = NULL;
        if (item == Py_None) {
            Py_DECREF(item);
            if (self->gate != NULL)
                gate_leave(self->gate, self);
            Py_RETURN_NONE;
        }
        ran = (Job *)item;
        if (self->placed
            && atomic_load_explicit(&placement_gen, memory_order_acquire) != self->placed_gen) {
            Py_BEGIN_ALLOW_THREADS
            channel_follow_placement(self);
            Py_END_ALLOW_THREADS
        }
        if (self->gate != NULL)
            atomic_store_explicit(&self->started_ns, now_ns(), memory_order_relaxed);
        int ours = job_execute(ran);
        if (self->gate != NULL)
            atomic_store_explicit(&self->started_ns, 0, memory_order_relaxed);
        if (!ours)
            Py_CLEAR(ran);   /* set() elsewhere: not ours to publish */
        else if (atomic_load_explicit(&ran->state, memory_order_acquire) == WAKER) {
            call_waker(job_publish(ran));   /* the loop sleeps: wake it now */
            Py_CLEAR(ran);
        }
    }
}

/* In a child made by fork(): the worker serving this channel is a thread of
 * the parent, absent here, and may have held the mutex at the fork.  Renew
 * the mutex and condition, leave the gate, and take no more jobs (a put()
 * fails instead of waiting for ever).  Queued jobs stay, unrun. */
static PyObject *
Channel_reset_after_fork(Channel *self, PyObject *Py_UNUSED(ignored))
{
    if (self->ring == NULL)
        Py_RETURN_NONE;
    pthread_mutex_init(&self->mutex, NULL);
    pthread_cond_init(&self->cond, NULL);
    self->parked = 0;
    self->closed = 1;
    self->line_next = NULL;
    atomic_store_explicit(&self->admitted, 0, memory_order_relaxed);
    atomic_store_explicit(&self->waiting, 0, memory_order_relaxed);
    atomic_store_explicit(&self->first, 0, memory_order_relaxed);
    atomic_store_explicit(&self->started_ns, 0, memory_order_relaxed);
    Py_RETURN_NONE;
}

static PyMethodDef Channel_methods[] = {
    {"reset_after_fork", (PyCFunction)Channel_reset_after_fork, METH_NOARGS,
     "In a forked child: renew the locks; the worker is gone, take no more jobs."},
    {"put", (PyCFunction)Channel_put, METH_O, "Queue a job (None stops the worker)."},
    {"get", (PyCFunction)Channel_get, METH_NOARGS,
     "Take the next job, waiting for it without the GIL (ignores the gate)."},
    {"serve", (PyCFunction)Channel_serve, METH_NOARGS,
     "Run queued jobs, in order, until None arrives."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
Channel_get_worker_spin(Channel *self, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble((double)self->spin_max / 1e9);
}

static PyGetSetDef Channel_getset[] = {
    {"worker_spin", (getter)Channel_get_worker_spin, NULL,
     "Longest time (seconds) the worker spins for its next job before parking.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Channel_slots[] = {
    {Py_tp_doc, "Jobs in order from the loop to one worker thread (None stops it)."},
    {Py_tp_getset, Channel_getset},
    {Py_tp_new, Channel_new},
    {Py_tp_dealloc, Channel_dealloc},
    {Py_tp_traverse, Channel_traverse},
    {Py_tp_clear, Channel_clear},
    {Py_tp_methods, Channel_methods},
    {0, NULL},
};

static PyType_Spec Channel_spec = {
    .name = "sqlalchemy_anyio._bridge._cbridge.Channel",
    .basicsize = sizeof(Channel),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = Channel_slots,
};

/* -- module --------------------------------------------------------------- */

/* Process-wide settings, read from the environment once (every interpreter
 * that loads the module sees the same values; nobody writes them later). */
static pthread_once_t settings_once = PTHREAD_ONCE_INIT;
static int settings_error;   /* 1: SQLALCHEMY_ANYIO_WORKER_SPIN_US is invalid */

static void
read_settings(void)
{
    const char *env = getenv("SQLALCHEMY_ANYIO_WORKER_SPIN_US");
    if (env != NULL && *env != '\0') {
        char *end;
        double us = strtod(env, &end);
        if (*end != '\0' || !(us >= 0) || us > 1e6)
            settings_error = 1;
        else
            worker_spin_max = (int64_t)(us * US);
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    max_worker_spinners = cpus > 2 ? (int)(cpus / 2) : 1;
}

/* In a child made by fork(): no worker of the parent spins here. */
static PyObject *
bridge_reset_after_fork(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    atomic_store(&worker_spinners, 0);
    atomic_store(&placement_packed, 0);
    pthread_mutex_init(&placement_mutex, NULL);
    Py_RETURN_NONE;
}

/* set_placement(cpus, packed): where placed workers run from their next job
 * on, and whether they share that CPU with the event loop (then they never
 * spin).  Called by _placement.py on the loop's thread. */
static PyObject *
bridge_set_placement(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *cpus;
    int packed;
    if (!PyArg_ParseTuple(args, "Op:set_placement", &cpus, &packed))
        return NULL;
#ifdef __linux__
    cpu_set_t set;
    CPU_ZERO(&set);
    PyObject *it = PyObject_GetIter(cpus);
    if (it == NULL)
        return NULL;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        long cpu = PyLong_AsLong(item);
        Py_DECREF(item);
        if (cpu == -1 && PyErr_Occurred())
            break;
        if (cpu < 0 || cpu >= CPU_SETSIZE) {
            PyErr_Format(PyExc_ValueError, "no such CPU: %ld", cpu);
            break;
        }
        CPU_SET((int)cpu, &set);
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    if (CPU_COUNT(&set) == 0) {
        PyErr_SetString(PyExc_ValueError, "set_placement needs at least one CPU");
        return NULL;
    }
    pthread_mutex_lock(&placement_mutex);
    placement_cpus = set;
    atomic_store_explicit(&placement_packed, packed, memory_order_relaxed);
    atomic_fetch_add_explicit(&placement_gen, 1, memory_order_release);
    pthread_mutex_unlock(&placement_mutex);
#else
    (void)cpus;
    atomic_store_explicit(&placement_packed, packed, memory_order_relaxed);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef bridge_methods[] = {
    {"reset_after_fork", bridge_reset_after_fork, METH_NOARGS,
     "In a forked child: forget the parent's spinning workers and placement."},
    {"set_placement", bridge_set_placement, METH_VARARGS,
     "set_placement(cpus, packed): where placed workers run from their next job on."},
    {NULL, NULL, 0, NULL},
};

static int
add_type(PyObject *module, PyType_Spec *spec, PyTypeObject **slot)
{
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, NULL);
    return *slot == NULL || PyModule_AddType(module, *slot) < 0 ? -1 : 0;
}

static int
bridge_exec(PyObject *module)
{
    bridge_state *st = PyModule_GetState(module);
    pthread_once(&settings_once, read_settings);
    if (settings_error) {
        PyErr_Format(PyExc_ValueError,
                     "SQLALCHEMY_ANYIO_WORKER_SPIN_US must be 0..1000000, not '%s'",
                     getenv("SQLALCHEMY_ANYIO_WORKER_SPIN_US"));
        return -1;
    }
    if (add_type(module, &Job_spec, &st->job_type) < 0
        || add_type(module, &Channel_spec, &st->channel_type) < 0
        || add_type(module, &Gate_spec, &st->gate_type) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "WORKER_SPIN_NS", (long)worker_spin_max);
}

static int
bridge_traverse(PyObject *module, visitproc visit, void *arg)
{
    bridge_state *st = PyModule_GetState(module);
    Py_VISIT(st->job_type);
    Py_VISIT(st->channel_type);
    Py_VISIT(st->gate_type);
    return 0;
}

static int
bridge_clear(PyObject *module)
{
    bridge_state *st = PyModule_GetState(module);
    Py_CLEAR(st->job_type);
    Py_CLEAR(st->channel_type);
    Py_CLEAR(st->gate_type);
    return 0;
}

static void
bridge_free(void *module)
{
    bridge_clear((PyObject *)module);
}

static PyModuleDef_Slot bridge_slots[] = {
    {Py_mod_exec, bridge_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef bridge_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "sqlalchemy_anyio._bridge._cbridge",
    .m_doc = "The loop <-> worker hand-off, waiting without the GIL.",
    .m_size = sizeof(bridge_state),
    .m_methods = bridge_methods,
    .m_slots = bridge_slots,
    .m_traverse = bridge_traverse,
    .m_clear = bridge_clear,
    .m_free = bridge_free,
};

PyMODINIT_FUNC
PyInit__cbridge(void)
{
    return PyModuleDef_Init(&bridge_module);
}
