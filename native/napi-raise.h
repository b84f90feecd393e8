/* Shared by the native addons: what to do with a JS exception a callback from C left pending. */
#ifndef SHADOWVM_NAPI_RAISE_H
#define SHADOWVM_NAPI_RAISE_H

#include <node_api.h>
#include <stdbool.h>

/* It goes to the process's uncaught-exception handling, as it would from a JS caller. */
static inline void raise_pending(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    napi_fatal_exception(env, exc);
  }
}

#endif
