/*
 * The SQL guard of `sqlinfer serve` and `sqlinfer sql --safe`: a Spark SQL check rule that refuses the
 * statements that would take a client out of SQL (shell commands, Java calls, code loading, writes
 * outside the warehouse) or change what every client shares (settings, the project's functions and views).
 *
 * Built by build_guard.sh into sqlinfer-guard.jar (javac against pyspark's jars, nothing downloaded);
 * tests/functional/test_serve_guard.py checks that the shipped jar is this source's build. How it is
 * used, and why each part exists: sqlinfer/serve/guard.py and docs/serve.md ("What clients cannot do").
 *
 * Spark's own switch, spark.sql.restrictedMode.enabled, refuses reflect/java_method/try_reflect and
 * TRANSFORM ... USING; sqlinfer turns it on unless the deployment allows one of them, and this rule then
 * refuses the other one itself. Everything else here has no Spark switch.
 */
package sqlinfer.guard;

import java.lang.reflect.Field;
import java.net.URI;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.TreeSet;

import org.apache.spark.sql.AnalysisException;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.TableIdentifier;
import org.apache.spark.sql.catalyst.analysis.LocalTempView$;
import org.apache.spark.sql.catalyst.catalog.CatalogStorageFormat;
import org.apache.spark.sql.catalyst.catalog.CatalogTable;
import org.apache.spark.sql.catalyst.catalog.SessionCatalog;
import org.apache.spark.sql.catalyst.expressions.CallMethodViaReflection;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.TryReflect;
import org.apache.spark.sql.catalyst.plans.logical.CacheTableAsSelect;
import org.apache.spark.sql.catalyst.plans.logical.CreateNamespace;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.plans.logical.ScriptTransformation;
import org.apache.spark.sql.catalyst.plans.logical.SetNamespaceLocation;
import org.apache.spark.sql.classic.RuntimeConfig;
import org.apache.spark.sql.execution.command.AddArchivesCommand;
import org.apache.spark.sql.execution.command.AddFilesCommand;
import org.apache.spark.sql.execution.command.AddJarsCommand;
import org.apache.spark.sql.execution.command.AlterTableAddPartitionCommand;
import org.apache.spark.sql.execution.command.AlterTableRenameCommand;
import org.apache.spark.sql.execution.command.AlterTableSetLocationCommand;
import org.apache.spark.sql.execution.command.AlterViewAsCommand;
import org.apache.spark.sql.execution.command.CreateDataSourceTableAsSelectCommand;
import org.apache.spark.sql.execution.command.CreateDataSourceTableCommand;
import org.apache.spark.sql.execution.command.CreateFunctionCommand;
import org.apache.spark.sql.execution.command.CreateSQLFunctionCommand;
import org.apache.spark.sql.execution.command.CreateTableCommand;
import org.apache.spark.sql.execution.command.CreateTableLikeCommand;
import org.apache.spark.sql.execution.command.CreateViewCommand;
import org.apache.spark.sql.execution.command.DropFunctionCommand;
import org.apache.spark.sql.execution.command.DropTempViewCommand;
import org.apache.spark.sql.execution.command.InsertIntoDataSourceDirCommand;
import org.apache.spark.sql.execution.command.LoadDataCommand;
import org.apache.spark.sql.execution.command.ResetCommand;
import org.apache.spark.sql.execution.command.SetCommand;
import org.apache.spark.sql.execution.datasources.CreateTempViewUsing;
import org.apache.spark.sql.hive.execution.CreateHiveTableAsSelectCommand;
import org.apache.spark.sql.hive.execution.InsertIntoHiveDirCommand;
import org.apache.spark.sql.internal.SQLConf;

import scala.Function1;
import scala.Option;
import scala.Tuple2;
import scala.runtime.BoxedUnit;

/** The extension named in spark.sql.extensions: it adds a {@link Check} to every session's analyzer. */
public final class SqlGuard implements Function1<SparkSessionExtensions, BoxedUnit> {

  /** The features a deployment allowed (serve.allow), comma separated: a SparkConf key, which no client can set. */
  public static final String ALLOW_KEY = "spark.sqlinfer.guard.allow";

  /** A marker at the start of every refusal, so callers can tell a refusal from other errors. */
  public static final String PREFIX = "sqlinfer SQL guard: ";

  // Hive's JDBC driver sends this with every connection (beeline too); it only sizes result batches.
  private static final Set<String> CONNECTION_SETTINGS_ALLOWED =
      Set.of("hive.server2.thrift.resultset.default.fetch.size");

  // Set by protect() once the project's functions and views exist; lower case (Spark's names are
  // case-insensitive). One guard per JVM: a JVM runs one project's session.
  private static volatile Set<String> functions = Set.of();
  private static volatile Set<String> views = Set.of();

  @Override
  public BoxedUnit apply(SparkSessionExtensions extensions) {
    extensions.injectCheckRule(session -> (Function1<LogicalPlan, BoxedUnit>) plan -> {
      new Check(session).plan(plan);
      return BoxedUnit.UNIT;
    });
    return BoxedUnit.UNIT;
  }

  /**
   * Protect the project's model functions and views (sources, view nodes) from being dropped, replaced or
   * shadowed by any statement. Called once they exist.
   */
  public static void protect(String[] functionNames, String[] viewNames) {
    functions = lowerCase(functionNames);
    views = lowerCase(viewNames);
  }

  /**
   * Make {@code session.conf().set} refuse any change: the Thrift server applies a connection's
   * {@code set:hiveconf:} and {@code set:hivevar:} settings (JDBC URL, PyHive's configuration) through it
   * before any statement, where no check rule sees them. SQL SET and RESET are refused by the rule.
   */
  public static void lockSettings(SparkSession session) {
    org.apache.spark.sql.classic.SparkSession classic = (org.apache.spark.sql.classic.SparkSession) session;
    RuntimeConfig current = classic.conf();  // initializes the lazy field first
    try {
      Field field = org.apache.spark.sql.classic.SparkSession.class.getDeclaredField("conf");
      field.setAccessible(true);
      field.set(classic, new LockedConf(current.sqlConf()));
    } catch (ReflectiveOperationException | RuntimeException e) {
      throw new IllegalStateException("cannot lock the session's settings on this Spark version: " + e, e);
    }
  }

  /** A session's settings that connections cannot change (see {@link #lockSettings}). */
  static final class LockedConf extends RuntimeConfig {
    LockedConf(SQLConf conf) {
      super(conf);
    }

    @Override
    public void set(String key, String value) {
      // Every connection re-applies the server's own hive.* settings (Hive copies the JVM's system
      // properties into each session's settings), and Hive's JDBC driver sends its fetch size: both pass,
      // as does any setting that changes nothing.
      boolean unchanged = value != null && (value.equals(System.getProperty(key))
          || value.equals(sqlConf().getConfString(key, null)));
      if (!unchanged && !CONNECTION_SETTINGS_ALLOWED.contains(key)) {
        throw refusal("setting " + key + " is refused: all clients share the server's one session, so a "
            + "setting would change every client's queries (a trusted deployment can allow it: serve.allow: [set])");
      }
      super.set(key, value);
    }

    @Override
    public void unset(String key) {
      throw refusal("resetting " + key + " is refused: all clients share the server's one session "
          + "(a trusted deployment can allow it: serve.allow: [set])");
    }
  }

  /** One statement's check. */
  static final class Check {
    private final SparkSession session;
    private final Set<String> allowed;
    private final boolean restricted;

    Check(SparkSession session) {
      this.session = session;
      String allow = session.sparkContext().getConf().get(ALLOW_KEY, "");
      this.allowed = new HashSet<>(Arrays.asList(allow.toLowerCase(Locale.ROOT).split("\\s*,\\s*")));
      this.restricted = SQLConf.get().restrictedModeEnabled();
    }

    void plan(LogicalPlan plan) {
      plan.foreachWithSubqueries((Function1<LogicalPlan, BoxedUnit>) node -> {
        node(node);
        return BoxedUnit.UNIT;
      });
    }

    private void node(LogicalPlan node) {
      // Spark's restricted mode covers these two when it is on; it is off when the deployment allowed one.
      if (!restricted && node instanceof ScriptTransformation) {
        feature("transform", "TRANSFORM ... USING", "it runs a shell command on the server");
      }
      if (!restricted && !allowed.contains("reflect")) {
        for (Expression expression : asJava(node.expressions())) {
          expression.foreach((Function1<Expression, BoxedUnit>) e -> {
            if (e instanceof CallMethodViaReflection || e instanceof TryReflect) {
              feature("reflect", e.prettyName() + "(...)", "it calls any Java method in the server");
            }
            return BoxedUnit.UNIT;
          });
        }
      }
      if (node instanceof AddJarsCommand) {
        feature("add_jar", "ADD JAR", "it loads code into the server");
      } else if (node instanceof AddFilesCommand) {
        feature("add_file", "ADD FILE", "it copies a file to the server and its workers");
      } else if (node instanceof AddArchivesCommand) {
        feature("add_archive", "ADD ARCHIVE", "it unpacks an archive on the server and its workers");
      } else if (node instanceof CreateFunctionCommand) {
        CreateFunctionCommand create = (CreateFunctionCommand) node;
        function(create.identifier().funcName(), "CREATE FUNCTION");
        feature("create_function", "CREATE FUNCTION ... AS '" + create.className() + "'",
            "it loads a Java class (from a jar it names, or Hive's reflect UDFs) into the server");
      } else if (node instanceof CreateSQLFunctionCommand) {
        function(((CreateSQLFunctionCommand) node).name().funcName(), "CREATE FUNCTION");
      } else if (node instanceof DropFunctionCommand) {
        function(((DropFunctionCommand) node).identifier().funcName(), "DROP FUNCTION");
      } else if (node instanceof SetCommand) {
        Option<Tuple2<String, Option<String>>> kv = ((SetCommand) node).kv();
        if (kv.isDefined() && kv.get()._2().isDefined()) {
          feature("set", "SET " + kv.get()._1(), "all clients share the server's one session, so a setting "
              + "would change every client's queries");
        }
      } else if (node instanceof ResetCommand) {
        feature("set", "RESET", "all clients share the server's one session");
      } else {
        views(node);
        paths(node);
        jdbc(node);
      }
    }

    /** Temporary views: all clients see them, and one named like a source or table hides it from all. */
    private void views(LogicalPlan node) {
      if (node instanceof CreateViewCommand) {
        CreateViewCommand create = (CreateViewCommand) node;
        if (create.viewType() == LocalTempView$.MODULE$) {
          newView(create.name().table(), "CREATE TEMPORARY VIEW");
        }
      } else if (node instanceof CreateTempViewUsing) {
        CreateTempViewUsing create = (CreateTempViewUsing) node;
        if (!create.global()) {
          newView(create.tableIdent().table(), "CREATE TEMPORARY VIEW");
        }
      } else if (node instanceof CacheTableAsSelect) {
        newView(((CacheTableAsSelect) node).tempViewNameString(), "CACHE TABLE ... AS");
      } else if (node instanceof DropTempViewCommand) {
        ownView(((DropTempViewCommand) node).ident().name(), "DROP VIEW");
      } else if (node instanceof AlterViewAsCommand) {
        TableIdentifier name = ((AlterViewAsCommand) node).name();
        if (name.database().isEmpty()) {
          ownView(name.table(), "ALTER VIEW");
        }
      } else if (node instanceof AlterTableRenameCommand) {
        AlterTableRenameCommand rename = (AlterTableRenameCommand) node;
        if (rename.oldName().database().isEmpty()) {
          ownView(rename.oldName().table(), "RENAME");
        }
        if (rename.newName().database().isEmpty()) {
          ownView(rename.newName().table(), "RENAME");
        }
      }
    }

    private void newView(String name, String what) {
      ownView(name, what);
      SessionCatalog catalog = ((org.apache.spark.sql.classic.SparkSession) session).sessionState().catalog();
      String database = catalog.getCurrentDatabase();
      if (catalog.tableExists(new TableIdentifier(name, Option.apply(database)))) {
        throw refusal(what + " " + name + " is refused: it would hide the table " + database + "." + name
            + " from every client (all clients share the server's one session); choose another name");
      }
    }

    private void ownView(String name, String what) {
      if (views.contains(name.toLowerCase(Locale.ROOT))) {
        throw refusal(what + " " + name + " is refused: " + name + " is one of the project's views, which "
            + "every client shares");
      }
    }

    private void function(String name, String what) {
      if (functions.contains(name.toLowerCase(Locale.ROOT))) {
        throw refusal(what + " " + name + " is refused: " + name + " is one of the project's model "
            + "functions, which every client shares");
      }
    }

    /** Statements that name a place to write, load from or keep a table: it must be in the warehouse. */
    private void paths(LogicalPlan node) {
      if (allowed.contains("external_paths")) {
        return;
      }
      if (node instanceof InsertIntoDataSourceDirCommand) {
        location("INSERT OVERWRITE DIRECTORY", ((InsertIntoDataSourceDirCommand) node).storage());
      } else if (node instanceof InsertIntoHiveDirCommand) {
        location("INSERT OVERWRITE DIRECTORY", ((InsertIntoHiveDirCommand) node).storage());
      } else if (node instanceof LoadDataCommand) {
        LoadDataCommand load = (LoadDataCommand) node;
        path(load.isLocal() ? "LOAD DATA LOCAL INPATH" : "LOAD DATA INPATH", load.path());
      } else if (node instanceof CreateDataSourceTableCommand) {
        table("CREATE TABLE", ((CreateDataSourceTableCommand) node).table());
      } else if (node instanceof CreateTableCommand) {
        table("CREATE TABLE", ((CreateTableCommand) node).table());
      } else if (node instanceof CreateDataSourceTableAsSelectCommand) {
        table("CREATE TABLE AS SELECT", ((CreateDataSourceTableAsSelectCommand) node).table());
      } else if (node instanceof CreateHiveTableAsSelectCommand) {
        table("CREATE TABLE AS SELECT", ((CreateHiveTableAsSelectCommand) node).tableDesc());
      } else if (node instanceof CreateTableLikeCommand) {
        CreateTableLikeCommand like = (CreateTableLikeCommand) node;
        location("CREATE TABLE " + like.targetTable().table() + " LIKE ... LOCATION", like.fileFormat());
      } else if (node instanceof AlterTableSetLocationCommand) {
        path("ALTER TABLE ... SET LOCATION", ((AlterTableSetLocationCommand) node).location());
      } else if (node instanceof AlterTableAddPartitionCommand) {
        for (Tuple2<?, Option<String>> spec : asJava(((AlterTableAddPartitionCommand) node).partitionSpecsAndLocs())) {
          if (spec._2().isDefined()) {
            path("ALTER TABLE ... ADD PARTITION ... LOCATION", spec._2().get());
          }
        }
      } else if (node instanceof CreateNamespace) {
        Option<String> location = ((CreateNamespace) node).properties().get("location");
        if (location.isDefined()) {
          path("CREATE DATABASE ... LOCATION", location.get());
        }
      } else if (node instanceof SetNamespaceLocation) {
        path("ALTER DATABASE ... SET LOCATION", ((SetNamespaceLocation) node).location());
      }
    }

    private void table(String what, CatalogTable table) {
      location(what + " " + table.identifier().table() + " LOCATION", table.storage());
    }

    private void location(String what, CatalogStorageFormat storage) {
      Option<URI> uri = storage.locationUri();
      if (uri.isDefined()) {
        path(what, uri.get().toString());
      }
    }

    private void path(String what, String location) {
      String warehouse = session.sparkContext().getConf().get("spark.sql.warehouse.dir", "");
      Path target = local(location);
      Path home = local(warehouse);
      if (target != null && home != null && target.startsWith(home)) {
        return;
      }
      throw refusal(what + " '" + location + "' is refused: clients may write and load only inside the "
          + "warehouse (" + warehouse + ") (a trusted deployment can allow it: serve.allow: [external_paths])");
    }

    /** CREATE ... USING jdbc: the embedded Derby metastore's driver runs in the server's JVM. */
    private void jdbc(LogicalPlan node) {
      if (allowed.contains("jdbc")) {
        return;
      }
      String provider = null;
      if (node instanceof CreateTempViewUsing) {
        provider = ((CreateTempViewUsing) node).provider();
      } else if (node instanceof CreateDataSourceTableCommand) {
        provider = orNull(((CreateDataSourceTableCommand) node).table().provider());
      } else if (node instanceof CreateDataSourceTableAsSelectCommand) {
        provider = orNull(((CreateDataSourceTableAsSelectCommand) node).table().provider());
      } else if (node instanceof CreateTableLikeCommand) {
        provider = orNull(((CreateTableLikeCommand) node).provider());
      }
      String name = provider == null ? "" : provider.toLowerCase(Locale.ROOT);
      if (name.equals("jdbc") || name.startsWith("org.apache.spark.sql.jdbc")
          || name.startsWith("org.apache.spark.sql.execution.datasources.jdbc")) {
        feature("jdbc", "USING jdbc", "a JDBC connection runs its driver, and any statement its options "
            + "name, inside the server (the embedded Derby driver can call Java methods)");
      }
    }

    private void feature(String name, String what, String why) {
      if (!allowed.contains(name)) {
        throw refusal(what + " is refused: " + why + " (a trusted deployment can allow it: serve.allow: ["
            + name + "])");
      }
    }
  }

  /** The path a location names on this machine, symbolic links resolved; null for another file system. */
  static Path local(String location) {
    String path = location;
    try {
      URI uri = new URI(location);
      if (uri.getScheme() != null && uri.getScheme().length() > 1) {  // not a Windows drive letter
        if (!uri.getScheme().equals("file")) {
          return null;
        }
        path = uri.getPath();
      }
    } catch (java.net.URISyntaxException e) {
      // A plain path with characters a URI may not hold (spaces): take it as it is.
    }
    return real(Paths.get(path));
  }

  /** {@code path} absolute, with "..", and the symbolic links of the part that exists, resolved. */
  static Path real(Path path) {
    Path absolute = path.toAbsolutePath().normalize();
    Path existing = absolute;
    while (existing != null && !Files.exists(existing)) {
      existing = existing.getParent();
    }
    if (existing == null) {
      return absolute;
    }
    try {
      return existing.toRealPath().resolve(existing.relativize(absolute)).normalize();
    } catch (java.io.IOException e) {
      return absolute;
    }
  }

  /**
   * Throws the refusal: an AnalysisException, which clients see as a query error, not a server failure.
   * Its error condition is the one raise_error() uses, the only one that takes a free message; without a
   * condition, SQL scripts (BEGIN ... END) fail on it with a NullPointerException instead of the message.
   */
  static RuntimeException refusal(String message) {
    throw SqlGuard.<RuntimeException>uncheckedThrow(new AnalysisException("USER_RAISED_EXCEPTION",
        new scala.collection.immutable.Map.Map1<String, String>("errorMessage", PREFIX + message)));
  }

  // Scala declares no checked exceptions: the check rule and RuntimeConfig.set may throw this one.
  @SuppressWarnings("unchecked")
  private static <E extends Throwable> E uncheckedThrow(Throwable error) throws E {
    throw (E) error;
  }

  private static Set<String> lowerCase(String[] names) {
    Set<String> lower = new TreeSet<>();
    for (String name : names) {
      lower.add(name.toLowerCase(Locale.ROOT));
    }
    return Collections.unmodifiableSet(lower);
  }

  private static String orNull(Option<String> option) {
    return option.isDefined() ? option.get() : null;
  }

  private static <T> List<T> asJava(scala.collection.immutable.Seq<T> seq) {
    return scala.jdk.javaapi.CollectionConverters.asJava(seq);
  }
}
