/*
 * shadowvm_peercred: who is at the other end of a UNIX stream socket.
 *
 * In:  a connected socket's file descriptor (Node's net.Socket handle fd).
 * Out: { pid, uid, gid } from SO_PEERCRED (socket(7)): the credentials the
 *      peer had when it called connect(2), set by the kernel, not by the peer.
 *      null when the descriptor is not a UNIX socket or the call fails.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <sys/socket.h>
#include <sys/types.h>

static napi_value peer_credentials(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_value result;
  int32_t fd = -1;
  struct ucred cred;
  socklen_t len = sizeof(cred);

  napi_get_null(env, &result);
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) return result;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) return result;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred)) return result;

  napi_value obj, pid, uid, gid;
  napi_create_object(env, &obj);
  napi_create_int32(env, (int32_t)cred.pid, &pid);
  napi_create_uint32(env, (uint32_t)cred.uid, &uid);
  napi_create_uint32(env, (uint32_t)cred.gid, &gid);
  napi_set_named_property(env, obj, "pid", pid);
  napi_set_named_property(env, obj, "uid", uid);
  napi_set_named_property(env, obj, "gid", gid);
  return obj;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "peerCredentials", NAPI_AUTO_LENGTH, peer_credentials, NULL, &fn);
  napi_set_named_property(env, exports, "peerCredentials", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
