/* A PKCS#11 module in front of a real one (SoftHSM2) that stops answering chosen calls,
 * for the tests of a token that hangs (tests/e2e/test_unitopen_hung_token.py).
 *
 * It loads the module SLOWHSM_MODULE names and hands out that module's function list
 * with four calls replaced: C_OpenSession, C_Login, C_FindObjects and C_Sign each wait
 * while the file $SLOWHSM_DIR/hang-open, hang-login, hang-find or hang-sign exists, then
 * go on to the real call. So a test makes the token hang, and answer again, with a file.
 *
 * No PKCS#11 header is needed: a function list is a version (two bytes) and then the 68
 * function pointers of PKCS#11 2.40, in the order of the standard.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef unsigned long ulong_t;
typedef void (*any_fn)(void);

struct function_list {
    unsigned char version[2];
    any_fn fn[68];
};

enum { OPEN_SESSION = 12, LOGIN = 18, FIND_OBJECTS = 27, SIGN = 43 };
#define CKR_OK 0UL
#define CKR_GENERAL_ERROR 5UL

typedef ulong_t (*open_fn)(ulong_t, ulong_t, void *, void *, ulong_t *);
typedef ulong_t (*login_fn)(ulong_t, ulong_t, unsigned char *, ulong_t);
typedef ulong_t (*find_fn)(ulong_t, ulong_t *, ulong_t, ulong_t *);
typedef ulong_t (*sign_fn)(ulong_t, unsigned char *, ulong_t, unsigned char *, ulong_t *);

static struct function_list *real;
static struct function_list slow;

static void wait_while_told(const char *call) {
    const char *dir = getenv("SLOWHSM_DIR");
    char path[4096];
    if (dir == NULL) {
        return;
    }
    snprintf(path, sizeof path, "%s/hang-%s", dir, call);
    while (access(path, F_OK) == 0) {
        usleep(20000);
    }
}

static ulong_t slow_open(ulong_t slot, ulong_t flags, void *app, void *notify, ulong_t *session) {
    wait_while_told("open");
    return ((open_fn)real->fn[OPEN_SESSION])(slot, flags, app, notify, session);
}

static ulong_t slow_login(ulong_t session, ulong_t user, unsigned char *pin, ulong_t length) {
    wait_while_told("login");
    return ((login_fn)real->fn[LOGIN])(session, user, pin, length);
}

static ulong_t slow_find(ulong_t session, ulong_t *found, ulong_t most, ulong_t *count) {
    wait_while_told("find");
    return ((find_fn)real->fn[FIND_OBJECTS])(session, found, most, count);
}

static ulong_t slow_sign(ulong_t session, unsigned char *data, ulong_t length,
                         unsigned char *signature, ulong_t *signature_length) {
    wait_while_told("sign");
    return ((sign_fn)real->fn[SIGN])(session, data, length, signature, signature_length);
}

ulong_t C_GetFunctionList(struct function_list **out) {
    if (real == NULL) {
        const char *module = getenv("SLOWHSM_MODULE");
        void *handle = dlopen(module ? module : "/usr/lib/softhsm/libsofthsm2.so",
                              RTLD_NOW | RTLD_LOCAL);
        if (handle == NULL) {
            return CKR_GENERAL_ERROR;
        }
        ulong_t (*get)(struct function_list **) =
            (ulong_t (*)(struct function_list **))dlsym(handle, "C_GetFunctionList");
        if (get == NULL || get(&real) != CKR_OK) {
            return CKR_GENERAL_ERROR;
        }
        slow = *real;
        slow.fn[OPEN_SESSION] = (any_fn)slow_open;
        slow.fn[LOGIN] = (any_fn)slow_login;
        slow.fn[FIND_OBJECTS] = (any_fn)slow_find;
        slow.fn[SIGN] = (any_fn)slow_sign;
    }
    *out = &slow;
    return CKR_OK;
}
