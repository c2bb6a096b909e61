/*
 * Keeps Hive from registering its own built-in functions in the JVM of `sqlinfer serve`.
 *
 * Why: when the Thrift server closes a client's session, Hive's SessionState calls Hive.get(conf). On a
 * pool thread that served another session before, the thread's cached Hive belongs to another user
 * object, so Hive makes a new one, and a new Hive registers Hive's function registry once per JVM.
 * FunctionRegistry's static initializer needs hive-llap classes that PySpark does not ship: the close
 * fails with NoClassDefFoundError (an Error, which Hive's close path does not catch), and Hive's
 * registration flag stays PENDING, so every later registration spins in Hive's wait loop.
 * Spark never uses that registry (its own metastore client calls Hive.getWithoutRegisterFns), so the
 * server marks the registration done before its first client: Hive.get then skips it.
 *
 * Built into sqlinfer-guard.jar with SqlGuard.java by build_guard.sh; called by sqlinfer/serve/server.py.
 */
package sqlinfer.guard;

import java.lang.reflect.Field;
import java.util.concurrent.atomic.AtomicInteger;

import org.apache.hadoop.hive.ql.metadata.Hive;

public final class HiveFunctions {
  // Hive's private states of didRegisterAllFuncs (REG_FUNCS_NO, REG_FUNCS_PENDING, REG_FUNCS_DONE).
  private static final int NOT_REGISTERED = 0;
  private static final int REGISTERED = 2;

  private HiveFunctions() {}

  /**
   * Marks Hive's function registration done unless it has started. Returns true when Hive will not
   * register its functions from now on; false when a registration is under way or the field is gone
   * (another Hive version: nothing changed then).
   */
  public static boolean skipRegistration() {
    try {
      Field field = Hive.class.getDeclaredField("didRegisterAllFuncs");
      field.setAccessible(true);
      AtomicInteger state = (AtomicInteger) field.get(null);
      return state.compareAndSet(NOT_REGISTERED, REGISTERED) || state.get() == REGISTERED;
    } catch (ReflectiveOperationException | ClassCastException | SecurityException e) {
      return false;
    }
  }
}
