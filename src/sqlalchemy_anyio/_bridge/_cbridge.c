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
 * seen (acquire).  Reads the clock only every 32 rounds: it is not free. */
static int
spin_while(_Atomic int *flag, int unwanted, int64_t budget_ns)
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
            if (now - start >= YIELD_AFTER_NS)
                sched_yield();
        }
    }
}

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

typedef struct {
    PyTypeObject *job_type;
    PyTypeObject *channel_type;
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
    st = spin_while(&self->state, PENDING, budget_ns);
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

/* -- Channel -------------------------------------------------------------- */

/* A FIFO of jobs (or None) from any thread to the one worker serving it.
 * The ring is guarded by the mutex; `pending` mirrors its length so the
 * worker can spin on it without the mutex. */
typedef struct {
    PyObject_HEAD
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    PyObject **ring;
    Py_ssize_t cap, head, len;      /* under mutex */
    int parked;                     /* under mutex: the worker sleeps on cond */
    int closed;                     /* under mutex: None was put */
    _Atomic int pending;            /* == len, readable without the mutex */
    _Atomic int64_t spin_ns;        /* the worker's current spin budget */
} Channel;

static PyObject *
Channel_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Channel() takes no arguments");
        return NULL;
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
    atomic_init(&self->spin_ns, worker_spin_max);
    return (PyObject *)self;
}

static int
Channel_traverse(Channel *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
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
    if (self->parked)
        pthread_cond_signal(&self->cond);
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

/* Take the next item (a new reference) or NULL if there is none.  Needs no
 * GIL: only the mutex. */
static PyObject *
channel_pop(Channel *self)
{
    PyObject *item = NULL;
    pthread_mutex_lock(&self->mutex);
    if (self->len > 0) {
        item = self->ring[self->head];
        self->ring[self->head] = NULL;
        self->head = (self->head + 1) % self->cap;
        self->len--;
        atomic_fetch_sub_explicit(&self->pending, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&self->mutex);
    return item;
}

/* Waiting for the next item, without the GIL, in three steps: spin for the
 * adaptive budget, park if nothing came, take the item.  The budget resets
 * to the maximum whenever a job arrived within it, and halves each time the
 * worker had to park longer than that: a worker that sees no work stops
 * spinning, and a parked one burns nothing. */

/* Spin; 1 if an item came within the budget.  `since` notes when we began. */
static int
channel_spin(Channel *self, int64_t *since)
{
    int64_t budget = atomic_load_explicit(&self->spin_ns, memory_order_relaxed);
    int found;
    *since = now_ns();
    if (budget > 0 && atomic_fetch_add(&worker_spinners, 1) < max_worker_spinners)
        found = spin_while(&self->pending, 0, budget) != 0;
    else   /* enough workers spin already: they would only take CPU from the rest */
        found = atomic_load_explicit(&self->pending, memory_order_acquire) != 0;
    if (budget > 0)
        atomic_fetch_sub(&worker_spinners, 1);
    if (!found)
        return 0;
    if (budget != worker_spin_max)
        atomic_store_explicit(&self->spin_ns, worker_spin_max, memory_order_relaxed);
    return 1;
}

static void
channel_park(Channel *self, int64_t since)
{
    pthread_mutex_lock(&self->mutex);
    self->parked = 1;
    while (self->len == 0)
        pthread_cond_wait(&self->cond, &self->mutex);
    self->parked = 0;
    pthread_mutex_unlock(&self->mutex);
    int64_t gap = now_ns() - since;
    int64_t budget = atomic_load_explicit(&self->spin_ns, memory_order_relaxed);
    budget = gap <= worker_spin_max ? worker_spin_max : budget >= 2 * US ? budget / 2 : 0;
    atomic_store_explicit(&self->spin_ns, budget, memory_order_relaxed);
}

static PyObject *
channel_take(Channel *self)
{
    PyObject *item = channel_pop(self);   /* we are the only consumer: it is there */
#ifndef Py_GIL_DISABLED
    /* The loop that queued this job probably still holds the GIL.  If it is
     * about to spin (and so to let go of it), wait for that rather than
     * sleep on the GIL. */
    if (item != Py_None)
        spin_while(&((Job *)item)->hint, HINT_NONE, HINT_WAIT_NS);
#endif
    return item;
}

static PyObject *
Channel_get(Channel *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *item = channel_pop(self);
    if (item == NULL) {
        int64_t since;
        Py_BEGIN_ALLOW_THREADS
        if (!channel_spin(self, &since))
            channel_park(self, since);
        item = channel_take(self);
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
        PyObject *item = channel_pop(self);
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
            if (!channel_spin(self, &since)) {
                if (ran != NULL) {
                    /* Idle from now on: do not keep the job (and whatever
                     * its outcome holds) alive while parked. */
                    PyEval_RestoreThread(ts);
                    Py_CLEAR(ran);
                    ts = PyEval_SaveThread();
                }
                channel_park(self, since);
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
            Py_RETURN_NONE;
        }
        ran = (Job *)item;
        if (!job_execute(ran))
            Py_CLEAR(ran);   /* set() elsewhere: not ours to publish */
        else if (atomic_load_explicit(&ran->state, memory_order_acquire) == WAKER) {
            call_waker(job_publish(ran));   /* the loop sleeps: wake it now */
            Py_CLEAR(ran);
        }
    }
}

static PyMethodDef Channel_methods[] = {
    {"put", (PyCFunction)Channel_put, METH_O, "Queue a job (None stops the worker)."},
    {"get", (PyCFunction)Channel_get, METH_NOARGS,
     "Take the next job, waiting for it (spin, then park) without the GIL."},
    {"serve", (PyCFunction)Channel_serve, METH_NOARGS,
     "Run queued jobs, in order, until None arrives."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Channel_slots[] = {
    {Py_tp_doc, "Jobs in order from the loop to one worker thread (None stops it)."},
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

static int
bridge_exec(PyObject *module)
{
    bridge_state *st = PyModule_GetState(module);
    const char *env = getenv("SQLALCHEMY_ANYIO_WORKER_SPIN_US");
    if (env != NULL && *env != '\0') {
        char *end;
        double us = strtod(env, &end);
        if (*end != '\0' || !(us >= 0) || us > 1e6) {
            PyErr_Format(PyExc_ValueError,
                         "SQLALCHEMY_ANYIO_WORKER_SPIN_US must be 0..1000000, not '%s'", env);
            return -1;
        }
        worker_spin_max = (int64_t)(us * US);
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    max_worker_spinners = cpus > 2 ? (int)(cpus / 2) : 1;
    st->job_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Job_spec, NULL);
    if (st->job_type == NULL || PyModule_AddType(module, st->job_type) < 0)
        return -1;
    st->channel_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Channel_spec, NULL);
    if (st->channel_type == NULL || PyModule_AddType(module, st->channel_type) < 0)
        return -1;
    return PyModule_AddIntConstant(module, "WORKER_SPIN_NS", (long)worker_spin_max);
}

static int
bridge_traverse(PyObject *module, visitproc visit, void *arg)
{
    bridge_state *st = PyModule_GetState(module);
    Py_VISIT(st->job_type);
    Py_VISIT(st->channel_type);
    return 0;
}

static int
bridge_clear(PyObject *module)
{
    bridge_state *st = PyModule_GetState(module);
    Py_CLEAR(st->job_type);
    Py_CLEAR(st->channel_type);
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
