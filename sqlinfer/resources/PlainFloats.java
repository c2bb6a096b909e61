/*
 * A Spark SQL rule in every sqlinfer session: Parquet files written by a statement (CREATE TABLE ... AS
 * SELECT, INSERT, a DataFrame write) store their float and double columns without a dictionary.
 *
 * Why: Parquet writes every column with a dictionary first and falls back to plain values when the
 * dictionary stops paying. Model outputs (logits, probabilities, embeddings) are wide arrays of floats
 * that almost never repeat, so each file's writer hashes every value into a map, then throws the map away
 * and writes the values again: in the bench's warm query over 1,000 images (1,000 logits a row) that was
 * 0.34 of the JVM's 1.5 CPU seconds (docs/performance.md). The rule names each float leaf in Parquet's
 * per-column setting (parquet.enable.dictionary#<column path>), so labels, paths and every other column
 * keep their dictionary. sqlinfer's builds name the same columns in their tables' OPTIONS themselves
 * (sqlinfer/build/write_options.py), so they write the same way where this jar is not on the driver.
 *
 * A statement or table that sets parquet.enable.dictionary itself, a session whose Hadoop configuration
 * sets it, and Spark's legacy Parquet layout (other column paths) are left as they are. A CREATE TABLE
 * keeps the options in its definition, as an OPTIONS clause would, so later appends write the same way.
 *
 * Built into sqlinfer-spark.jar with SqlGuard.java by build_jar.sh; added to every session by
 * sqlinfer/runtime/settings.py (spark.sql.extensions).
 */
package sqlinfer.writes;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.catalog.CatalogStorageFormat;
import org.apache.spark.sql.catalyst.catalog.CatalogTable;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.catalyst.rules.Rule;
import org.apache.spark.sql.execution.command.CreateDataSourceTableAsSelectCommand;
import org.apache.spark.sql.execution.datasources.InsertIntoHadoopFsRelationCommand;
import org.apache.spark.sql.execution.datasources.parquet.ParquetFileFormat;
import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DoubleType;
import org.apache.spark.sql.types.FloatType;
import org.apache.spark.sql.types.MapType;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

import scala.Function1;
import scala.Option;
import scala.collection.immutable.Map;
import scala.collection.immutable.Seq;
import scala.runtime.BoxedUnit;

/** The extension named in spark.sql.extensions: it adds {@link Writes} to every session's analyzer. */
public final class PlainFloats implements Function1<SparkSessionExtensions, BoxedUnit> {

  /** Parquet's dictionary switch; {@code DICTIONARY + "#" + path} sets it for one column. */
  public static final String DICTIONARY = "parquet.enable.dictionary";

  @Override
  public BoxedUnit apply(SparkSessionExtensions extensions) {
    extensions.injectPostHocResolutionRule(Writes::new);
    return BoxedUnit.UNIT;
  }

  /**
   * Runs after Spark's own resolution has turned a statement into the command that writes the files:
   * an INSERT or DataFrame write into InsertIntoHadoopFsRelationCommand (its options reach the Parquet
   * writer), a CREATE TABLE ... AS SELECT into CreateDataSourceTableAsSelectCommand (its table's options
   * do).
   */
  static final class Writes extends Rule<LogicalPlan> {
    private final SparkSession session;

    Writes(SparkSession session) {
      this.session = session;
    }

    @Override
    public LogicalPlan apply(LogicalPlan plan) {
      if (conf().writeLegacyParquetFormat() || session.sparkContext().hadoopConfiguration().get(DICTIONARY) != null) {
        return plan;
      }
      if (plan instanceof InsertIntoHadoopFsRelationCommand insert && insert.fileFormat() instanceof ParquetFileFormat) {
        Map<String, String> options = plainFloats(insert.options(), insert.outputColumnNames(), insert.query().schema());
        return options == insert.options() ? plan : insert.copy(insert.outputPath(), insert.staticPartitions(),
            insert.ifPartitionNotExists(), insert.partitionColumns(), insert.bucketSpec(), insert.fileFormat(),
            options, insert.query(), insert.mode(), insert.catalogTable(), insert.fileIndex(),
            insert.outputColumnNames());
      }
      if (plan instanceof CreateDataSourceTableAsSelectCommand create && isParquet(create.table().provider())) {
        CatalogStorageFormat storage = create.table().storage();
        Map<String, String> properties =
            plainFloats(storage.properties(), create.outputColumnNames(), create.query().schema());
        if (properties == storage.properties()) {
          return plan;
        }
        CatalogTable table = create.table().withNewStorage(storage.locationUri(), storage.inputFormat(),
            storage.outputFormat(), storage.compressed(), storage.serde(), properties, storage.serdeName());
        return create.copy(table, create.mode(), create.query(), create.outputColumnNames());
      }
      return plan;
    }
  }

  /** {@code options} plus "no dictionary" for each float leaf of the written columns, or {@code options}
   * itself when it sets the dictionary already or there is no float column. */
  @SuppressWarnings("unchecked")  // Scala's Map.updated has no generic signature Java can see
  static Map<String, String> plainFloats(Map<String, String> options, Seq<String> names, StructType schema) {
    if (options.contains(DICTIONARY)) {
      return options;
    }
    StructField[] fields = schema.fields();
    List<String> paths = new ArrayList<>();
    for (int i = 0; i < fields.length; i++) {
      // The files' column names: the statement's, where Spark renames the query's columns.
      String name = names.size() == fields.length ? names.apply(i) : fields[i].name();
      collect(fields[i].dataType(), name, paths);
    }
    Map<String, String> out = options;
    for (String path : paths) {
      String key = DICTIONARY + "#" + path;
      if (!out.contains(key)) {
        out = (Map<String, String>) out.updated(key, "false");
      }
    }
    return out;
  }

  /** Parquet's paths of the float and double leaves under {@code path}, in Spark's standard layout. */
  static void collect(DataType type, String path, List<String> paths) {
    if (type instanceof FloatType || type instanceof DoubleType) {
      paths.add(path);
    } else if (type instanceof ArrayType array) {
      collect(array.elementType(), path + ".list.element", paths);
    } else if (type instanceof MapType map) {
      collect(map.keyType(), path + ".key_value.key", paths);
      collect(map.valueType(), path + ".key_value.value", paths);
    } else if (type instanceof StructType struct) {
      for (StructField field : struct.fields()) {
        collect(field.dataType(), path + "." + field.name(), paths);
      }
    }
  }

  private static boolean isParquet(Option<String> provider) {
    if (provider.isEmpty()) {
      return false;
    }
    String name = provider.get().toLowerCase(Locale.ROOT);
    return name.equals("parquet") || name.equals(ParquetFileFormat.class.getName().toLowerCase(Locale.ROOT));
  }
}
